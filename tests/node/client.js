// The README's Node.js caller: @grpc/grpc-js with @grpc/proto-loader, loading the gateway's proto
// from the repository's proto root. The root must be in `includeDirs`: gateway.proto imports
// google/api/annotations.proto (vendored under proto/), which a load without it cannot find
// (ENOENT). Error details (`grpc-status-details-bin`) are decoded with protobufjs from the same
// root. Usage: node client.js HOST:PORT; prints one JSON line per call for the test to read.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '../../proto');

const definition = protoLoader.loadSync('dds/gateway/v1/gateway.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { EngineVersionService } = grpc.loadPackageDefinition(definition).dds.gateway.v1;

// google.rpc.Status and its details, to read an error's reason and field violations.
const rpc = new protobuf.Root();
rpc.resolvePath = (_origin, target) => path.join(PROTO_ROOT, target);
rpc.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const Status = rpc.lookupType('google.rpc.Status');

function details(error) {
  const [raw] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!raw) return [];
  return Status.decode(raw).details.map((any) => {
    const type = rpc.lookupType(any.type_url.split('/').pop());
    return { type: type.fullName.slice(1), ...type.toObject(type.decode(any.value)) };
  });
}

function call(client, method, request) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 10_000);
    client[method](request, { deadline }, (error, response) => {
      if (error) {
        resolve({ method, code: grpc.status[error.code], message: error.details, details: details(error) });
      } else {
        resolve({ method, code: 'OK', response });
      }
    });
  });
}

async function main() {
  const address = process.argv[2];
  const client = new EngineVersionService(address, grpc.credentials.createInsecure());
  const calls = [
    ['GetEngineVersion', { db_instance_id: 'dds-sandbox01', region_id: 'cn-hangzhou' }],
    ['UpgradeEngineVersion', { db_instance_id: 'dds-sandbox01', engine_version: '4.4', validate_only: true }],
    ['UpgradeEngineVersion', { db_instance_id: '', engine_version: 'x' }],
  ];
  for (const [method, request] of calls) {
    console.log(JSON.stringify(await call(client, method, request)));
  }
  client.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
