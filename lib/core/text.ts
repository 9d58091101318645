/**
 * Text for a terminal: names from a checkpoint (tensor names, file names)
 * are data, and data may hold control characters: a `\r` that rewrites the
 * line, `ESC[31m` that colours the rest of the screen, a newline that makes
 * one error two lines, a right-to-left override that reverses what follows.
 * Printed through {@link printable}, each shows as a visible escape.
 */

/** C0 and C1 controls, DEL, and the Unicode bidi and line/paragraph separators. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * A string with its control characters escaped (`\n`, `\r`, `\t`, `\x1b`,
 * `\u{202e}`); a backslash before an escape-like sequence is left as it is.
 * @param text any string
 * @returns the same string when it has no control character
 */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => {
    const named = NAMED[c];
    if (named) return named;
    const code = c.codePointAt(0)!;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
  });
}
