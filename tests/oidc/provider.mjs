// A real OpenID Connect provider (panva's certified `oidc-provider`) for winflow's
// integration tests, plus an emulation of Entra ID's federated identity credentials.
//
//   node provider.mjs --config <file.json> [--exit-with-stdin]
//
// Config: { port, host, tls: {cert, key}, issuer, accessTokenTtlSeconds,
//           clients: [{clientId, clientSecret, scope}],
//           federated: [{clientId, issuer, subject, audience, jwks}], state }
// With `tls` (paths of PEM files: the certificate chain and its key) it serves HTTPS and the
// default issuer is https://<host>:<port>; otherwise plain HTTP.
// Prints exactly one line `ready <issuer>` on stdout once listening; everything else goes to
// stderr. Runs until killed (or, with --exit-with-stdin, until its stdin closes, so that it
// never outlives a test process that died without cleaning up). Started by test-support/src/oidc.rs; the node modules come from
// hack/oidc-provider.sh (a cache outside the checkout, passed as WINFLOW_OIDC_NODE_MODULES).
//
// Extra endpoint: GET /__harness/requests lists every token-endpoint request seen by this
// process (never secrets or tokens); each record is also appended to the `state` file as a
// JSON line, before the response is sent, so the records survive a restart.

import { appendFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { parse as parseQuery, stringify as stringifyQuery } from 'node:querystring';
import { pathToFileURL } from 'node:url';

// stdout carries only the `ready` line: oidc-provider prints notices with console.info.
console.log = console.info = (...args) => console.error(...args);

// Bare imports in ES modules resolve next to this file only (NODE_PATH is ignored), so the
// modules installed in the cache are resolved explicitly. Without the variable, a plain
// `npm ci` in tests/oidc works too.
const modules = process.env.WINFLOW_OIDC_NODE_MODULES;
const require = createRequire(modules ? join(modules, '..', 'resolve-from-here.js') : import.meta.url);
async function load(name) {
  let path;
  try {
    path = require.resolve(name);
  } catch (e) {
    console.error(`cannot find '${name}' (WINFLOW_OIDC_NODE_MODULES=${modules ?? ''}); set it to what hack/oidc-provider.sh prints`);
    throw e;
  }
  return import(pathToFileURL(path).href);
}
const { default: Provider } = await load('oidc-provider');
const jose = await load('jose');

const configIndex = process.argv.indexOf('--config');
if (configIndex === -1 || !process.argv[configIndex + 1]) {
  console.error('usage: node provider.mjs --config <file.json>');
  process.exit(2);
}
const config = JSON.parse(readFileSync(process.argv[configIndex + 1], 'utf8'));
const ttl = config.accessTokenTtlSeconds ?? 30;
// Loopback unless the test's pods must reach it (the local node's bridge address).
const host = config.host ?? '127.0.0.1';
const federated = config.federated ?? [];

const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const TOKEN_PATH = '/token';

// Listen first: the default issuer needs the port that was actually bound. Requests that
// arrive before the provider is set up (a client retrying during a restart) wait for it.
let setUp;
const handler = new Promise((resolve) => { setUp = resolve; });
const handle = async (req, res) => (await handler)(req, res);
const server = config.tls
  ? createHttpsServer({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, handle)
  : createServer(handle);
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port ?? 0, host, resolve);
});
const { port } = server.address();
const issuer = config.issuer ?? `${config.tls ? 'https' : 'http'}://${host}:${port}`;

// Federated clients authenticate with a JWT instead of a secret; oidc-provider knows nothing
// of that, so they are registered with a secret only this process knows, and a verified
// assertion is swapped for it before oidc-provider reads the request.
const internalSecrets = new Map();
const clients = new Map();
for (const { clientId, clientSecret, scope } of config.clients ?? []) {
  clients.set(clientId, {
    client_id: clientId,
    client_secret: clientSecret,
    scope: scope || undefined,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    // client_secret_post is accepted too: oidc-provider takes either secret method.
    token_endpoint_auth_method: 'client_secret_basic',
  });
}
for (const { clientId } of federated) {
  if (!clients.has(clientId)) {
    const secret = randomBytes(32).toString('base64url');
    internalSecrets.set(clientId, secret);
    clients.set(clientId, {
      client_id: clientId,
      client_secret: secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
    });
  }
}

// oidc-provider only enforces a client's `scope` allow-list for scopes it knows of.
const scopes = new Set(['openid', 'offline_access']);
for (const { scope } of config.clients ?? []) {
  for (const s of (scope ?? '').split(' ')) if (s) scopes.add(s);
}

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingKey = { ...(await jose.exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: randomBytes(8).toString('hex') };

const provider = new Provider(issuer, {
  clients: [...clients.values()],
  jwks: { keys: [signingKey] },
  scopes: [...scopes],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    // No login pages: only machine-to-machine grants are exercised.
    devInteractions: { enabled: false },
  },
  ttl: {
    ClientCredentials: () => ttl,
    AccessToken: () => ttl,
  },
  // Cookies are never used by these grants; a key only silences the dev warning.
  cookies: { keys: [randomBytes(32).toString('hex')] },
});

// One entry per token-endpoint request, successful or not.
const records = [];
function record(entry) {
  records.push(entry);
  if (config.state) appendFileSync(config.state, `${JSON.stringify(entry)}\n`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function basicClientId(authorization) {
  const [scheme, value] = (authorization ?? '').split(' ');
  if (scheme?.toLowerCase() !== 'basic' || !value) return undefined;
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  try {
    return i === -1 ? undefined : decodeURIComponent(decoded.slice(0, i).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

// Entra ID's check of a federated identity credential: the assertion is a JWT from the
// configured issuer, signed by one of its keys, for the configured subject and audience, and
// not expired. Returns { entry, claims } (the verified ones), or { error } saying why not.
async function verifyAssertion(assertion, clientId) {
  let lastError = 'no federated credential for this client_id';
  for (const entry of federated) {
    if (clientId !== undefined && clientId !== entry.clientId) continue;
    try {
      const { payload } = await jose.jwtVerify(assertion, jose.createLocalJWKSet(entry.jwks), {
        issuer: entry.issuer,
        subject: entry.subject,
        audience: entry.audience,
        requiredClaims: ['exp'],
      });
      const claims = {};
      for (const name of ['iss', 'sub', 'aud', 'iat', 'exp', 'nbf', 'jti']) {
        if (payload[name] !== undefined) claims[name] = payload[name];
      }
      return { entry, claims };
    } catch (e) {
      lastError = `${e.code ?? 'ERR'}: ${e.message}`;
    }
  }
  return { error: lastError };
}

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/__harness/requests') {
    ctx.body = records;
    return;
  }
  if (ctx.method !== 'POST' || ctx.path !== TOKEN_PATH) {
    await next();
    return;
  }

  // The body is read here (to see how the client authenticates) and handed on as a string;
  // oidc-provider then parses `req.body` instead of the already consumed stream.
  const raw = await readBody(ctx.req);
  const params = ctx.is('application/x-www-form-urlencoded') ? parseQuery(raw) : {};
  const single = (v) => (Array.isArray(v) ? v[0] : v);
  const entry = {
    time: Date.now(),
    clientId: single(params.client_id) ?? basicClientId(ctx.get('authorization')) ?? null,
    grantType: single(params.grant_type) ?? null,
    authMethod: 'none',
    scope: single(params.scope) ?? null,
    status: 0,
    assertion: null,
    error: null,
  };
  if (ctx.get('authorization')) entry.authMethod = 'client_secret_basic';
  else if (params.client_secret !== undefined) entry.authMethod = 'client_secret_post';
  else if (params.client_assertion_type === JWT_BEARER && params.client_assertion !== undefined) entry.authMethod = 'federated';

  try {
    if (entry.authMethod === 'federated') {
      const result = await verifyAssertion(single(params.client_assertion), single(params.client_id));
      if (!result.entry) {
        entry.error = `invalid_client: ${result.error}`;
        ctx.status = 401;
        ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
        return;
      }
      entry.clientId = result.entry.clientId;
      entry.assertion = result.claims;
      const rewritten = { ...params, client_id: result.entry.clientId };
      delete rewritten.client_assertion;
      delete rewritten.client_assertion_type;
      rewritten.client_secret = internalSecrets.get(result.entry.clientId)
        ?? clients.get(result.entry.clientId).client_secret;
      ctx.req.body = stringifyQuery(rewritten);
    } else {
      ctx.req.body = raw;
    }
    await next();
    if (ctx.status >= 400 && ctx.body && typeof ctx.body === 'object') {
      const detail = ctx.state.errorDetail || ctx.body.error_description;
      entry.error = [ctx.body.error, detail].filter(Boolean).join(': ');
    }
  } finally {
    entry.status = ctx.status;
    record(entry);
  }
});

// oidc-provider tells the client only a generic description (e.g. "client authentication
// failed"); the real reason (e.g. "invalid secret provided") goes to stderr and the record.
provider.on('server_error', (ctx, err) => console.error('server_error', err));
for (const event of ['grant.error', 'introspection.error']) {
  provider.on(event, (ctx, err) => {
    ctx.state.errorDetail = err.error_detail;
    console.error(event, err.message, err.error_detail ?? '');
  });
}

// An issuer with a path (Entra's look like https://login.microsoftonline.com/<tenant>/v2.0)
// serves its endpoints under that path: oidc-provider derives the mount path from
// `originalUrl` minus `url`, as when mounted in Express.
const mountPath = new URL(issuer).pathname.replace(/\/$/, '');
const callback = provider.callback();
setUp((req, res) => {
  if (mountPath && (req.url === mountPath || req.url.startsWith(`${mountPath}/`))) {
    req.originalUrl = req.url;
    req.url = req.url.slice(mountPath.length) || '/';
  }
  callback(req, res);
});

process.on('SIGTERM', () => process.exit(0));
if (process.argv.includes('--exit-with-stdin')) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
process.stdout.write(`ready ${issuer}\n`);
