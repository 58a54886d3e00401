/**
 * Thrown when a signed envelope does not verify: unknown key, bad signature, or bytes that do
 * not decode. The envelope must not be applied.
 */
export class SignatureError extends Error {
  override name = 'SignatureError';
}

/**
 * Thrown when a policy patch does not apply: the base it names is not the one held, a splice is
 * out of range or out of order, or the result's digest is not the one the patch carries. Nothing
 * of the patch may be applied.
 */
export class PatchError extends Error {
  override name = 'PatchError';
}
