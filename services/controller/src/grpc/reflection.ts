// gRPC server reflection (grpc.reflection.v1 and v1alpha) from the descriptors buf compiled:
// the real files (`edgeplane/v1/policy.proto` importing `google/protobuf/duration.proto`, map
// entries named `LabelsEntry`), so tools that build requests from reflection alone (grpcurl,
// Python's descriptor pool) can. @grpc/reflection synthesized its own files from proto-loader's
// definitions, which protobuf's descriptor pools refused.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { DescriptorFile, DescriptorIndex } from '@edgeplane/proto';

/** The reflection request as proto-loader decodes it (keepCase, oneofs). */
interface ReflectionRequest {
  host?: string;
  message_request?: 'file_by_filename' | 'file_containing_symbol' | 'file_containing_extension' | 'all_extension_numbers_of_type' | 'list_services';
  file_by_filename?: string;
  file_containing_symbol?: string;
  file_containing_extension?: { containing_type?: string; extension_number?: number };
  all_extension_numbers_of_type?: string;
  list_services?: string;
}

/** Longest name or path a request may carry; longer ones are answered INVALID_ARGUMENT. */
const MAX_REFLECTION_NAME = 1024;

/** The reflection services' definitions, from the .proto files @grpc/reflection ships. */
function reflectionDefinitions(): grpc.ServiceDefinition[] {
  const root = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection')), '..', 'proto');
  return (['v1', 'v1alpha'] as const).map((v) => {
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(join(root, 'grpc', 'reflection', v, 'reflection.proto'), { keepCase: true, longs: String, enums: Number, defaults: false, oneofs: true }));
    const reflection = (pkg.grpc as grpc.GrpcObject).reflection as grpc.GrpcObject;
    return ((reflection[v] as grpc.GrpcObject).ServerReflection as grpc.ServiceClientConstructor).service;
  });
}

/** The answer to one reflection request (pure, given the index). `sent` holds the files this stream already sent. */
export function answerReflection(index: DescriptorIndex, services: readonly string[], req: ReflectionRequest, sent: Set<string>): Record<string, unknown> {
  const base = { valid_host: req.host ?? '', original_request: req };
  const error = (code: grpc.status, message: string) => ({ ...base, error_response: { error_code: code, error_message: message } });
  const files = (file: DescriptorFile | undefined, what: string) =>
    file ? { ...base, file_descriptor_response: { file_descriptor_proto: index.withDependencies(file, sent).map((f) => Buffer.from(f.bytes)) } } : error(grpc.status.NOT_FOUND, `${what} not found`);
  const tooLong = (s: string | undefined): boolean => (s?.length ?? 0) > MAX_REFLECTION_NAME;
  switch (req.message_request) {
    case 'list_services':
      return { ...base, list_services_response: { service: services.map((name) => ({ name })) } };
    case 'file_by_filename':
      if (tooLong(req.file_by_filename)) return error(grpc.status.INVALID_ARGUMENT, `file_by_filename: longer than ${MAX_REFLECTION_NAME} characters`);
      // A file asked for by name is sent again even if this stream sent it before.
      sent.delete(req.file_by_filename ?? '');
      return files(index.file(req.file_by_filename ?? ''), `file ${JSON.stringify(req.file_by_filename ?? '')}`);
    case 'file_containing_symbol':
      if (tooLong(req.file_containing_symbol)) return error(grpc.status.INVALID_ARGUMENT, `file_containing_symbol: longer than ${MAX_REFLECTION_NAME} characters`);
      {
        const file = index.fileOfSymbol(req.file_containing_symbol ?? '');
        if (file) sent.delete(file.name);
        return files(file, `symbol ${JSON.stringify(req.file_containing_symbol ?? '')}`);
      }
    case 'file_containing_extension':
      return error(grpc.status.NOT_FOUND, 'this API defines no extensions');
    case 'all_extension_numbers_of_type': {
      const type = req.all_extension_numbers_of_type ?? '';
      if (tooLong(type)) return error(grpc.status.INVALID_ARGUMENT, `all_extension_numbers_of_type: longer than ${MAX_REFLECTION_NAME} characters`);
      return index.fileOfSymbol(type) ? { ...base, all_extension_numbers_response: { base_type_name: type, extension_number: [] } } : error(grpc.status.NOT_FOUND, `type ${JSON.stringify(type)} not found`);
    }
    default:
      return error(grpc.status.INVALID_ARGUMENT, 'the request names no known message_request');
  }
}

/**
 * Adds grpc.reflection.v1 and v1alpha to `server` (give it the authorizing wrapper: reflection
 * is for callers that may read the API), answering for `services` — those of them the
 * descriptors define, in `list_services` — from `index`.
 */
export function addReflection(server: Pick<grpc.Server, 'addService'>, index: DescriptorIndex, services: readonly string[]): void {
  const listed = services.filter((s) => index.fileOfSymbol(s)).sort();
  for (const definition of reflectionDefinitions()) {
    server.addService(definition, {
      ServerReflectionInfo(call: grpc.ServerDuplexStream<ReflectionRequest, Record<string, unknown>>) {
        const sent = new Set<string>();
        call.on('data', (req: ReflectionRequest) => void call.write(answerReflection(index, listed, req, sent)));
        call.on('end', () => call.end());
        call.on('error', () => undefined);
      },
    });
  }
}
