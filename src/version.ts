import { readFileSync } from "node:fs";

declare const __PYRO_VERSION__: string | undefined;

/** The package version: inlined by the bundler, read from package.json when run from source. */
export const VERSION: string =
  typeof __PYRO_VERSION__ === "string"
    ? __PYRO_VERSION__
    : (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;
