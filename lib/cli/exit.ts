/**
 * Exit statuses of the excp command (also in every --help and README).
 */
export const EXIT = Object.freeze({
  ok: 0,
  /** Bad or corrupt input, a wrong base, an I/O error. */
  error: 1,
  /** Bad usage: unknown command or option, bad value. */
  usage: 2,
  /** compare: an error above --max-error (the comparison itself worked). */
  differs: 3,
  /** stdout was closed by its reader before the output was complete: 128 + SIGPIPE, what a shell reports for a program killed by it. */
  brokenPipe: 141,
});
