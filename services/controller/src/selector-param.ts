import { LabelSelectorSyntaxError, parseLabelSelector, type LabelSelector } from '@edgeplane/proto';
import { ValidationError } from './errors.js';

/**
 * Parses a request's label-selector field (empty = no selector).
 * @throws ValidationError naming `field` when the text is not a selector.
 */
export function selectorParam(text: string, field: string): LabelSelector | undefined {
  if (!text) return undefined;
  try {
    return parseLabelSelector(text);
  } catch (err) {
    if (err instanceof LabelSelectorSyntaxError) throw new ValidationError('invalid label selector', [{ field, description: err.message, reason: 'INVALID_LABEL_SELECTOR' }]);
    throw err;
  }
}
