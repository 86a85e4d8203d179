import { readFileSync } from "node:fs";

/**
 * A validator for requests against a Swagger 2.0 description (the subset of
 * JSON Schema Swagger uses: $ref, type, enum, required, properties,
 * minimum, maximum, readOnly), for checking the firecracker driver's API
 * requests against Firecracker's published description. Stricter than
 * Swagger on one point, as Firecracker is: a property the schema does not
 * name is an error (Firecracker's API deserializes with
 * `deny_unknown_fields`, so it answers 400 to one).
 */

type Schema = {
  $ref?: string;
  type?: string;
  enum?: unknown[];
  required?: string[];
  properties?: Record<string, Schema>;
  additionalProperties?: boolean;
  minimum?: number;
  maximum?: number;
  readOnly?: boolean;
  items?: Schema;
};

interface Parameter {
  name: string;
  in: "body" | "path" | "query";
  required?: boolean;
  type?: string;
  schema?: Schema;
}

export interface SwaggerDoc {
  swagger: string;
  paths: Record<string, Record<string, { operationId: string; parameters?: Parameter[]; responses: Record<string, unknown> }>>;
  definitions: Record<string, Schema>;
}

export function loadSwagger(path: string): SwaggerDoc {
  const doc = JSON.parse(readFileSync(path, "utf8")) as SwaggerDoc;
  if (doc.swagger !== "2.0") throw new Error(`${path} is not a Swagger 2.0 description`);
  return doc;
}

function resolveRef(doc: SwaggerDoc, s: Schema): Schema {
  let cur = s;
  for (let i = 0; cur.$ref; i++) {
    if (i > 16) throw new Error(`$ref loop at ${s.$ref}`);
    const m = /^#\/definitions\/(.+)$/.exec(cur.$ref);
    const next = m ? doc.definitions[m[1]!] : undefined;
    if (!next) throw new Error(`unresolvable $ref ${cur.$ref}`);
    cur = next;
  }
  return cur;
}

/** Every way `value` breaks `schema`, as "where: what" lines (empty: it conforms). */
export function validate(doc: SwaggerDoc, schema: Schema, value: unknown, where = "body"): string[] {
  const s = resolveRef(doc, schema);
  const errors: string[] = [];
  const kind = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
  switch (s.type) {
    case "object":
      if (kind !== "object") return [`${where}: expected an object, got ${kind}`];
      break;
    case "string":
      if (kind !== "string") return [`${where}: expected a string, got ${kind}`];
      break;
    case "boolean":
      if (kind !== "boolean") return [`${where}: expected a boolean, got ${kind}`];
      break;
    case "integer":
      if (kind !== "number" || !Number.isInteger(value)) return [`${where}: expected an integer, got ${JSON.stringify(value)}`];
      break;
    case "number":
      if (kind !== "number") return [`${where}: expected a number, got ${kind}`];
      break;
    case "array":
      if (kind !== "array") return [`${where}: expected an array, got ${kind}`];
      break;
    case undefined:
      break;
    default:
      throw new Error(`${where}: schema type ${s.type} is not handled by this validator`);
  }
  if (s.enum && !s.enum.includes(value)) errors.push(`${where}: ${JSON.stringify(value)} is not one of ${JSON.stringify(s.enum)}`);
  if (typeof value === "number") {
    if (s.minimum !== undefined && value < s.minimum) errors.push(`${where}: ${value} is below the minimum ${s.minimum}`);
    if (s.maximum !== undefined && value > s.maximum) errors.push(`${where}: ${value} is above the maximum ${s.maximum}`);
  }
  if (s.type === "object" && kind === "object") {
    const obj = value as Record<string, unknown>;
    const props = s.properties ?? {};
    for (const r of s.required ?? []) if (!(r in obj)) errors.push(`${where}: the required property ${r} is missing`);
    for (const [k, v] of Object.entries(obj)) {
      const p = props[k];
      if (!p) {
        if (s.additionalProperties !== true) errors.push(`${where}: ${k} is not a property of this object`);
        continue;
      }
      if (resolveRef(doc, p).readOnly || p.readOnly) errors.push(`${where}.${k}: is read-only`);
      errors.push(...validate(doc, p, v, `${where}.${k}`));
    }
  }
  if (s.type === "array" && kind === "array" && s.items) (value as unknown[]).forEach((v, i) => errors.push(...validate(doc, s.items!, v, `${where}[${i}]`)));
  return errors;
}

/** The operation a method and concrete path name (templates like /drives/{drive_id} matched), with the path's parameters. */
export function findOperation(doc: SwaggerDoc, method: string, path: string): { template: string; operationId: string; parameters: Parameter[]; pathParams: Record<string, string> } | null {
  for (const [template, ops] of Object.entries(doc.paths)) {
    const names: string[] = [];
    const re = new RegExp(`^${template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{([^}]+)\}/g, (_, n: string) => (names.push(n), "([^/]+)"))}$`);
    const m = re.exec(path);
    const op = ops[method.toLowerCase()];
    if (!m || !op) continue;
    const pathParams = Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1]!)]));
    return { template, operationId: op.operationId, parameters: op.parameters ?? [], pathParams };
  }
  return null;
}

/** Every way a request breaks the description: an unknown path or method, a path parameter, its body. */
export function validateRequest(doc: SwaggerDoc, method: string, path: string, body: unknown): string[] {
  const op = findOperation(doc, method, path);
  if (!op) return [`${method} ${path}: no such operation in the API description`];
  const errors: string[] = [];
  for (const p of op.parameters) {
    if (p.in === "path") {
      const v = op.pathParams[p.name];
      if (p.required && !v) errors.push(`${method} ${path}: the path parameter ${p.name} is empty`);
      // Firecracker refuses a body whose id differs from the path's ("The id from the path does not match the id from the body").
      if (body && typeof body === "object" && p.name in (body as object) && (body as Record<string, unknown>)[p.name] !== v) {
        errors.push(`${method} ${path}: body.${p.name} ${JSON.stringify((body as Record<string, unknown>)[p.name])} differs from the path's ${JSON.stringify(v)}`);
      }
    } else if (p.in === "body" && p.schema) {
      if (body === undefined) {
        if (p.required) errors.push(`${method} ${path}: the body is required`);
      } else {
        errors.push(...validate(doc, p.schema, body, `${method} ${path} body`));
      }
    }
  }
  return errors;
}
