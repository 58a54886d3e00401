/**
 * Thrown when a signed envelope does not verify: unknown key, bad signature, or bytes that do
 * not decode. The envelope must not be applied.
 */
export class SignatureError extends Error {
  override name = 'SignatureError';
}
