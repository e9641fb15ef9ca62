// Signs test client assertions (stand-ins for Kubernetes service-account tokens) with a fresh
// RSA key, for tests of the federated-credential path of provider.mjs.
//
//   node sign-assertion.mjs '<JSON array of claim sets>'
//
// Prints one JSON line: { "jwks": {keys: [public key]}, "assertions": ["<jwt>", ...] }, one
// RS256 JWT per claim set, all signed by the same key. `iat` defaults to now and `exp` to
// now + 1 hour; give them explicitly (e.g. an `exp` in the past) to override.

import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// Same module lookup as provider.mjs.
const modules = process.env.WINFLOW_OIDC_NODE_MODULES;
const require = createRequire(modules ? join(modules, '..', 'resolve-from-here.js') : import.meta.url);
const jose = await import(pathToFileURL(require.resolve('jose')).href);

const claimSets = JSON.parse(process.argv[2] ?? '[]');
const { publicKey, privateKey } = await jose.generateKeyPair('RS256');
const kid = 'test-key';
const jwk = { ...(await jose.exportJWK(publicKey)), alg: 'RS256', use: 'sig', kid };
const now = Math.floor(Date.now() / 1000);

const assertions = [];
for (const claims of claimSets) {
  assertions.push(
    await new jose.SignJWT({ iat: now, exp: now + 3600, ...claims })
      .setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' })
      .sign(privateKey),
  );
}
process.stdout.write(`${JSON.stringify({ jwks: { keys: [jwk] }, assertions })}\n`);
