import test from 'ava';
import { errnoError, LibbpfError, NotFoundError, NotSupportedError, VerifierError } from '../src/index.js';

test('errnoError - translates errno into the matching class, code and message', (t) => {
  const notFound = errnoError('map lookup name=rules', -2);
  t.true(notFound instanceof NotFoundError);
  t.like(notFound, { name: 'NotFoundError', errno: 2, code: 'ENOENT', operation: 'map lookup name=rules' });
  t.is(notFound.message, 'map lookup name=rules: ENOENT (No such file or directory)');

  const kernelInternal = errnoError('map update batch name=devs', -524);
  t.true(kernelInternal instanceof NotSupportedError);
  t.like(kernelInternal, { name: 'NotSupportedError', code: 'ENOTSUPP' });
  t.like(errnoError('attach xdp ifindex=3', 95), { name: 'NotSupportedError', code: 'EOPNOTSUPP' });

  const big = errnoError('map update name=rules', -7, { details: ['libbpf: something'] });
  t.like(big, { name: 'LibbpfError', code: 'E2BIG', details: ['libbpf: something'] });
  t.is(big.message, 'map update name=rules: E2BIG (Argument list too long)\nlibbpf: something');
  t.like(errnoError('open object path=x.o', -4001), { code: 'LIBBPF_ERRNO__FORMAT' });
  t.true(errnoError('x', 1) instanceof LibbpfError);
});

test('VerifierError - keeps the whole log and puts its last lines in the message', (t) => {
  const log = Array.from({ length: 10 }, (_, i) => `line ${i}`).join('\n');
  const error = new VerifierError('load object path=a.o program=p', -13, 'p', log, { cause: new Error('inner') });
  t.is(error.name, 'VerifierError');
  t.is(error.log, log);
  t.is(error.program, 'p');
  t.regex(error.message, /^load object path=a\.o program=p: EACCES \(Permission denied\)\nverifier log of program p \(last lines\):\nline 6\nline 7\nline 8\nline 9$/);
  t.true(error instanceof LibbpfError);
  t.is((error.cause as Error).message, 'inner');
});
