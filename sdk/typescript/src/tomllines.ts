/**
 * Where each table header and `key =` line of a TOML text is, for error messages: the parser
 * gives values without positions. Best effort, as shoal.conf.problems: bare and simply quoted
 * keys; a key it cannot place falls back to its nearest table's line.
 */

/** The 1-based line of a key path (or of its nearest parent), or undefined. */
export type KeyLines = (keys: string[]) => number | undefined;

const KEY = /\s*(?:"([^"\\]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*/y;

/** The key parts at the start of `text` (a dotted key) and where they end, or null. */
function readKey(text: string): [string[], number] | null {
  const parts: string[] = [];
  let pos = 0;
  for (;;) {
    KEY.lastIndex = pos;
    const found = KEY.exec(text);
    if (!found) return null;
    parts.push(found[1] ?? found[2] ?? found[3]);
    pos = KEY.lastIndex;
    if (text[pos] !== ".") return [parts, pos];
    pos += 1;
  }
}

export function keyLines(text: string): KeyLines {
  const lines = new Map<string, number>();
  const note = (keys: string[], line: number) => {
    for (let end = 1; end <= keys.length; end++) {
      const key = JSON.stringify(keys.slice(0, end));
      if (!lines.has(key)) lines.set(key, line); // the first mention wins
    }
  };
  let table: string[] = [];
  let inMultiline = false;
  text.split(/\r?\n/).forEach((raw, i) => {
    const triples = (raw.match(/"""|'''/g) ?? []).length;
    if (inMultiline) {
      inMultiline = triples % 2 === 0;
      return;
    }
    const line = raw.trimStart();
    if (line.startsWith("[")) {
      const parsed = readKey(line.slice(line.startsWith("[[") ? 2 : 1));
      if (parsed) {
        table = parsed[0];
        note(table, i + 1);
      }
    } else if (line && !line.startsWith("#")) {
      const parsed = readKey(line);
      if (parsed && line.slice(parsed[1]).startsWith("=")) note([...table, ...parsed[0]], i + 1);
    }
    inMultiline = triples % 2 === 1;
  });
  return (keys) => {
    for (let end = keys.length; end > 0; end--) {
      const found = lines.get(JSON.stringify(keys.slice(0, end)));
      if (found !== undefined) return found;
    }
    return undefined;
  };
}
