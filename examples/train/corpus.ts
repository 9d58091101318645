/**
 * The training text: the files of `examples/corpus/`, a character
 * vocabulary, and a train/validation split (last 10% of every file held
 * out, so both splits cover every document's style).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Folder holding the committed corpus (`examples/corpus/`). */
export const CORPUS_DIR = fileURLToPath(new URL('../corpus/', import.meta.url));

/** A tokenised corpus: symbol ids per split plus the vocabulary. */
export interface Corpus {
  /** Sorted distinct characters; a symbol id is an index into this string. */
  vocabulary: string;
  /** Training symbols (files' first 90%, concatenated). */
  train: Uint8Array;
  /** Validation symbols (files' last 10%, concatenated). */
  validation: Uint8Array;
}

/**
 * Read the `.txt` files of a folder in name order.
 * Latin-1 decoding maps every byte to one character, so no byte sequence can
 * fail to decode (the committed files are ASCII anyway).
 * @param dir folder to read; defaults to the committed corpus
 * @returns the file texts, sorted by file name
 */
export function readCorpusFiles(dir: string = CORPUS_DIR): string[] {
  const names = readdirSync(dir).filter((name) => name.endsWith('.txt')).sort();
  if (names.length === 0) throw new Error(`corpus: no .txt files in ${dir}`);
  return names.map((name) => readFileSync(join(dir, name), 'latin1'));
}

/**
 * Tokenise documents into characters and split them.
 * @param documents texts; each contributes its first `1 - validationFraction` to train
 * @param validationFraction share of every document held out (0..0.5)
 * @returns vocabulary and the two symbol streams
 * @throws Error when the vocabulary exceeds 256 symbols (ids are bytes)
 */
export function buildCorpus(documents: readonly string[], validationFraction = 0.1): Corpus {
  if (!(validationFraction > 0 && validationFraction <= 0.5)) {
    throw new Error(`corpus: validationFraction ${validationFraction} outside (0, 0.5]`);
  }
  const seen = new Set<string>();
  for (const doc of documents) for (const ch of doc) seen.add(ch);
  const vocabulary = [...seen].sort().join('');
  if (vocabulary.length > 256) throw new Error(`corpus: ${vocabulary.length} distinct characters, at most 256 supported`);
  const ids = new Map<string, number>();
  for (let i = 0; i < vocabulary.length; i++) ids.set(vocabulary[i]!, i);

  let trainLength = 0;
  let validationLength = 0;
  const cuts = documents.map((doc) => {
    const cut = doc.length - Math.floor(doc.length * validationFraction);
    trainLength += cut;
    validationLength += doc.length - cut;
    return cut;
  });
  const train = new Uint8Array(trainLength);
  const validation = new Uint8Array(validationLength);
  let t = 0;
  let v = 0;
  documents.forEach((doc, d) => {
    const cut = cuts[d]!;
    for (let i = 0; i < doc.length; i++) {
      const id = ids.get(doc[i]!)!;
      if (i < cut) train[t++] = id;
      else validation[v++] = id;
    }
  });
  return { vocabulary, train, validation };
}

/**
 * The committed corpus, tokenised and split.
 * @param dir folder of `.txt` files; defaults to `examples/corpus/`
 * @returns the corpus
 */
export function loadCorpus(dir?: string): Corpus {
  return buildCorpus(readCorpusFiles(dir));
}
