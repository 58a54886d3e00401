import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import {
  Action,
  ApplyPolicyRequest,
  ApplyPolicyResponse,
  ApplyServiceRequest,
  ApplyServiceResponse,
  GetPolicyResponse,
  GetServiceResponse,
  HealthCheck_Type,
  IntentServiceClient,
  IntentServiceService,
  InterfaceRole,
  LabelSelectorRequirement_Operator,
  Policy,
  Protocol,
  STATUS_DETAILS_KEY,
  Service,
  decodeStatusDetails,
  encodeStatusDetails,
  type IntentServiceServer,
} from '@edgeplane/proto';

// A grpc-js server with the generated service definition. It stores what ApplyPolicy sends
// and hands it back from GetPolicy, so the test sees the wire encoding in both directions.
function startServer(): Promise<{ server: grpc.Server; address: string }> {
  const stored = new Map<string, Policy>();
  const services = new Map<string, Service>();
  const impl: IntentServiceServer = {
    applyPolicy(call, callback) {
      const policy = call.request.policy;
      if (!policy?.metadata?.name) {
        const md = new grpc.Metadata();
        md.set(
          STATUS_DETAILS_KEY,
          Buffer.from(
            encodeStatusDetails({
              code: grpc.status.INVALID_ARGUMENT,
              message: 'invalid policy',
              fieldViolations: [{ field: 'policy.metadata.name', description: 'required', reason: 'REQUIRED' }],
            }),
          ),
        );
        callback({ code: grpc.status.INVALID_ARGUMENT, details: 'invalid policy', metadata: md });
        return;
      }
      const revision = 18_446_744_073_709_551_000n;
      const saved: Policy = { ...policy, metadata: { ...policy.metadata, resourceVersion: revision } };
      stored.set(policy.metadata.name, saved);
      callback(null, ApplyPolicyResponse.fromPartial({ policy: saved, revision, created: true }));
    },
    getPolicy(call, callback) {
      const policy = stored.get(call.request.name);
      if (!policy) return callback({ code: grpc.status.NOT_FOUND, details: `policy ${call.request.name} not found` });
      callback(null, GetPolicyResponse.fromPartial({ policy, revision: policy.metadata?.resourceVersion ?? 0n }));
    },
    deletePolicy(_call, callback) {
      callback({ code: grpc.status.UNIMPLEMENTED });
    },
    listPolicies(_call, callback) {
      callback({ code: grpc.status.UNIMPLEMENTED });
    },
    pauseRollout: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    resumeRollout: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    promoteRollout: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    abortRollout: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    resetHistory: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    applyService(call, callback) {
      const service = call.request.service!;
      services.set(service.metadata!.name, service);
      callback(null, ApplyServiceResponse.fromPartial({ service, revision: 1n, created: true }));
    },
    getService(call, callback) {
      const service = services.get(call.request.name);
      if (!service) return callback({ code: grpc.status.NOT_FOUND, details: `service ${call.request.name} not found` });
      callback(null, GetServiceResponse.fromPartial({ service, revision: 1n }));
    },
    deleteService: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    listServices: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    watchPolicies(call) {
      call.destroy({ name: 'Error', message: 'unimplemented', code: grpc.status.UNIMPLEMENTED } as grpc.ServiceError);
    },
  };
  const server = new grpc.Server();
  server.addService(IntentServiceService, impl);
  return new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) return reject(err);
      resolve({ server, address: `127.0.0.1:${port}` });
    });
  });
}

function unary<Req, Res>(fn: (req: Req, cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, (err, res) => (err ? reject(err) : resolve(res))));
}

const policy: Policy = Policy.fromPartial({
  metadata: { name: 'edge-web', labels: { team: 'net' } },
  spec: {
    nodeSelector: {
      matchLabels: { site: 'ams1' },
      matchExpressions: [{ key: 'tier', operator: LabelSelectorRequirement_Operator.OPERATOR_IN, values: ['edge', 'pop'] }],
    },
    interfaceRole: InterfaceRole.INTERFACE_ROLE_UPLINK,
    defaultAction: Action.ACTION_DENY,
    rules: [
      {
        priority: 10,
        name: 'https-v6',
        sourceCidrs: ['2001:db8::/32', '::ffff:0:0/96'],
        destinationCidrs: ['2001:db8:ffff::1/128'],
        protocol: Protocol.PROTOCOL_TCP,
        destinationPorts: [{ first: 443, last: 443 }, { first: 8000, last: 8999 }],
        action: Action.ACTION_ALLOW,
      },
      {
        priority: 20,
        sourceCidrs: ['fe80::/10'],
        protocol: Protocol.PROTOCOL_UDP,
        action: Action.ACTION_RATE_LIMIT,
        // Beyond 2^53: survives only if 64-bit fields are bigints end to end.
        rateLimit: { packetsPerSecond: 9_007_199_254_740_993n, burst: 18_446_744_073_709_551_615n },
      },
    ],
  },
});

test('IntentService - Apply then Get round-trips a policy with IPv6 rules and 64-bit fields', async (t) => {
  const { server, address } = await startServer();
  const client = new IntentServiceClient(address, grpc.credentials.createInsecure());
  t.teardown(() => {
    client.close();
    server.forceShutdown();
  });

  const applied = await unary<ApplyPolicyRequest, ApplyPolicyResponse>(client.applyPolicy.bind(client), ApplyPolicyRequest.fromPartial({ policy }));
  t.is(applied.revision, 18_446_744_073_709_551_000n);
  t.true(applied.created);

  const got = await unary<{ name: string }, GetPolicyResponse>(client.getPolicy.bind(client), { name: 'edge-web' });
  t.is(got.revision, 18_446_744_073_709_551_000n);
  t.is(got.policy?.metadata?.resourceVersion, 18_446_744_073_709_551_000n);
  t.deepEqual(got.policy?.spec, policy.spec);
  t.is(got.policy?.spec?.rules[1]?.rateLimit?.burst, 18_446_744_073_709_551_615n);
  t.deepEqual(got.policy?.spec?.rules[0]?.sourceCidrs, ['2001:db8::/32', '::ffff:0:0/96']);
});

test('IntentService - Apply then Get round-trips a service: a drained weight (0) and an unset one stay apart on the wire', async (t) => {
  const { server, address } = await startServer();
  const client = new IntentServiceClient(address, grpc.credentials.createInsecure());
  t.teardown(() => {
    client.close();
    server.forceShutdown();
  });
  const service = Service.fromPartial({
    metadata: { name: 'web' },
    spec: {
      vip: '2001:db8::10',
      protocol: Protocol.PROTOCOL_TCP,
      port: 443,
      backends: [{ address: '2001:db8::1', weight: 0 }, { address: '2001:db8::2' }, { address: '2001:db8::3', port: 8443, weight: 10_000 }],
      healthCheck: { type: HealthCheck_Type.TYPE_HTTP, httpPath: '/healthz', interval: { seconds: 5n, nanos: 500_000_000 } },
    },
  });
  await unary<ApplyServiceRequest, ApplyServiceResponse>(client.applyService.bind(client), ApplyServiceRequest.fromPartial({ service }));
  const got = await unary<{ name: string }, GetServiceResponse>(client.getService.bind(client), { name: 'web' });
  t.deepEqual(got.service?.spec, service.spec);
  t.deepEqual(
    got.service?.spec?.backends.map((b) => b.weight),
    [0, undefined, 10_000],
  );
});

test('IntentService - errors carry google.rpc.BadRequest field violations a client can decode', async (t) => {
  const { server, address } = await startServer();
  const client = new IntentServiceClient(address, grpc.credentials.createInsecure());
  t.teardown(() => {
    client.close();
    server.forceShutdown();
  });

  const err = await t.throwsAsync<grpc.ServiceError>(unary(client.applyPolicy.bind(client), ApplyPolicyRequest.fromPartial({ policy: { spec: {} } })));
  t.is(err?.code, grpc.status.INVALID_ARGUMENT);
  const raw = err?.metadata.get(STATUS_DETAILS_KEY)[0];
  t.true(Buffer.isBuffer(raw));
  const details = decodeStatusDetails(raw as Buffer);
  t.deepEqual(details?.fieldViolations, [{ field: 'policy.metadata.name', description: 'required', reason: 'REQUIRED' }]);
  t.is(details?.code, grpc.status.INVALID_ARGUMENT);

  const missing = await t.throwsAsync<grpc.ServiceError>(unary(client.getPolicy.bind(client), { name: 'nope' }));
  t.is(missing?.code, grpc.status.NOT_FOUND);
});
