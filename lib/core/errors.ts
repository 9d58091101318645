/**
 * One error class for the whole codec, with stable codes.
 *
 * Why a code table: callers (the CLI, users' scripts, the fuzz specs) branch on
 * `err.code`, never on message text, so messages are free to carry numbers,
 * file names and tensor names.
 */

/** Every code an {@link ExcpError} can carry, with what it means. */
export const CODES = Object.freeze({
  ERR_USAGE: 'bad command-line usage',
  ERR_OUT_OF_RANGE: 'an option is outside its documented range',
  ERR_INVALID_ARG: 'an argument has the wrong type or form',
  ERR_BAD_MAGIC: 'the input is not the expected format',
  ERR_VERSION: 'the container version is not supported',
  ERR_BAD_HEADER: 'a header is malformed or inconsistent',
  ERR_HEADER_TOO_LARGE: 'a header is larger than the limit',
  ERR_SHAPE: 'a shape, offset or size is invalid or too large',
  ERR_DTYPE: 'an unsupported or mismatched dtype',
  ERR_TRUNCATED: 'the input ended early',
  ERR_TRAILING_DATA: 'bytes follow a complete input',
  ERR_CRC: 'a checksum does not match: the data is corrupt',
  ERR_CORRUPT: 'decoded data is inconsistent: the data is corrupt',
  ERR_FINGERPRINT: 'restored data does not match the fingerprint recorded at compression',
  ERR_BASE_MISSING: 'the container needs a base checkpoint and none was given',
  ERR_BASE_MISMATCH: 'the given base is not the one the container was made against',
  ERR_BASE_IMPLAUSIBLE: 'the base does not look like an earlier checkpoint of the same run',
  ERR_IMPOSSIBLE_SYMBOL: 'a symbol with zero frequency was coded',
  ERR_UNSAFE_PICKLE: 'a pickle names a global outside the allow-list',
  ERR_BAD_PICKLE: 'a pickle is malformed or uses an unsupported opcode',
  ERR_BAD_ZIP: 'a zip archive is malformed or unsupported',
  ERR_PARAM_MAP: 'optimizer state cannot be matched to parameter names',
  ERR_CHAIN: 'a chain folder or manifest is invalid',
  ERR_MISMATCH: 'two checkpoints being compared do not hold the same tensors',
  ERR_TOO_DIFFERENT: 'a compared checkpoint differs by more than the allowed error',
  ERR_EXISTS: 'the output exists (use --force to overwrite)',
  ERR_SAME_FILE: 'the output would overwrite an input',
  ERR_NO_SPACE: 'no space left on the output device',
  ERR_IO: 'an input/output operation failed',
} as const);

/** A stable error code, e.g. `'ERR_CRC'`. */
export type ErrorCode = keyof typeof CODES;

/** The only error type the library throws or emits. */
export class ExcpError extends Error {
  /** Stable, machine-readable code from {@link CODES}. */
  readonly code: ErrorCode;

  /**
   * @param code one of {@link CODES}
   * @param message human text; by convention it starts with the stage, e.g. `safetensors: ...`
   */
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ExcpError';
    this.code = code;
  }
}

/**
 * Build an error whose message starts with the stage that raised it.
 * @param code stable code
 * @param stage short stage name, e.g. `container`
 * @param what the message, carrying the offending numbers and names
 * @returns the error (the caller throws or routes it)
 */
export function excpError(code: ErrorCode, stage: string, what: string): ExcpError {
  return new ExcpError(code, `${stage}: ${what}`);
}

/**
 * Narrow an unknown thrown value to an ExcpError; anything else is wrapped
 * (codes from Node's fs are mapped so the CLI can print one clear line).
 * @param err anything thrown
 * @param context a file name or stage, prepended to foreign messages (none: the message alone)
 * @returns an ExcpError
 */
export function toExcpError(err: unknown, context?: string): ExcpError {
  if (err instanceof ExcpError) return err;
  const e = err as NodeJS.ErrnoException | undefined;
  const message = e && typeof e.message === 'string' ? e.message : String(err);
  const prefix = context ? `${context}: ` : '';
  if (e && e.code === 'ENOSPC') return new ExcpError('ERR_NO_SPACE', `${prefix}no space left on device`, { cause: err });
  if (e && typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code)) {
    return new ExcpError('ERR_IO', `${prefix}${message}`, { cause: err });
  }
  return new ExcpError('ERR_CORRUPT', `${prefix}${message}`, { cause: err });
}
