/** Where a task's tree lives inside its sandbox. */
export const WORKSPACE = "/workspace";
