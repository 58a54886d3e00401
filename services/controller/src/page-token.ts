import { ValidationError } from './errors.js';

/** Pagination over names in ascending order: the token is the last name served, opaque to clients. */
export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;
/** Longest token this controller issues: a base64url JSON position of a key of at most a few hundred characters. */
const MAX_PAGE_TOKEN_LENGTH = 1024;

/**
 * Returns one page of `items` (sorted by `key`) after the position in `pageToken`.
 * @throws ValidationError for a negative page size or a token this controller did not issue.
 */
export function paginate<T>(items: readonly T[], key: (item: T) => string, pageSize: number, pageToken: string, path = ''): Page<T> {
  if (pageSize < 0) throw new ValidationError('invalid page size', [{ field: `${path}page_size`, description: 'must not be negative', reason: 'OUT_OF_RANGE' }]);
  const size = Math.min(pageSize || DEFAULT_PAGE, MAX_PAGE);
  let after = '';
  if (pageToken.length > MAX_PAGE_TOKEN_LENGTH) throw new ValidationError('invalid page token', [{ field: `${path}page_token`, description: `${pageToken.length} characters; a token is at most ${MAX_PAGE_TOKEN_LENGTH}`, reason: 'INVALID_PAGE_TOKEN' }]);
  if (pageToken) {
    try {
      const parsed = JSON.parse(Buffer.from(pageToken, 'base64url').toString()) as { after?: unknown };
      if (typeof parsed.after !== 'string') throw new Error('no position');
      after = parsed.after;
    } catch {
      throw new ValidationError('invalid page token', [{ field: `${path}page_token`, description: 'not a token from a previous response', reason: 'INVALID_PAGE_TOKEN' }]);
    }
  }
  const sorted = [...items].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  const rest = after ? sorted.filter((i) => key(i) > after) : sorted;
  const page = rest.slice(0, size);
  const last = page[page.length - 1];
  const nextPageToken = rest.length > size && last ? Buffer.from(JSON.stringify({ after: key(last) })).toString('base64url') : '';
  return { items: page, nextPageToken };
}
