import {
  SpanStatusCode,
  context,
  type Context,
  type Span,
  type SpanOptions,
  type Tracer,
} from '@opentelemetry/api';

/** Options for `withSpan`: the usual `SpanOptions`, and the parent context. */
export interface WithSpanOptions extends SpanOptions {
  /**
   * The context whose span becomes the parent (default: the active context), e.g. the one
   * `extractNatsHeaders` returned for a received message.
   */
  parent?: Context;
}

/**
 * Runs `fn` inside a new span named `name`, active for the duration of `fn` (including its
 * awaits, when the SDK's context manager is registered). The span ends when `fn` returns or,
 * for a promise, settles. If `fn` throws or rejects, the exception is recorded on the span,
 * its status set to ERROR, and the same error rethrown: `withSpan` returns or throws exactly
 * what `fn` does. The span is owned by `withSpan`; `fn` may add attributes and events but
 * must not end it.
 */
export function withSpan<T>(
  tracer: Tracer,
  name: string,
  options: WithSpanOptions,
  fn: (span: Span) => T,
): T {
  const { parent = context.active(), ...spanOptions } = options;
  return tracer.startActiveSpan(name, spanOptions, parent, (span): T => {
    let result: T;
    try {
      result = fn(span);
    } catch (err) {
      fail(span, err);
      span.end();
      throw err;
    }
    if (isPromiseLike(result)) {
      return Promise.resolve(result).then(
        (value) => {
          span.end();
          return value;
        },
        (err: unknown) => {
          fail(span, err);
          span.end();
          throw err;
        },
      ) as T;
    }
    span.end();
    return result;
  });
}

function fail(span: Span, err: unknown): void {
  if (err instanceof Error) {
    span.recordException(err);
    span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
  } else {
    span.recordException(String(err));
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
  }
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}
