// A real OIDC issuer for the end-to-end tests: discovery, JWKS, RS256 tokens.
// POST /token (grant_type=client_credentials, aud=..., claims=<JSON>) mints a
// token whose payload gets the extra claims (sub, groups, exp …).
// Prints {"url": ...} on stdout once listening on a free port
// (ISSUER_HOST / ISSUER_PORT / ISSUER_URL set them, as in docker-compose.yml).
import { OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
// ISSUER_ALG picks the signing algorithm (RS256 default, ES256 …). SIGUSR2
// adds a new key (ISSUER_ROTATE_ALG, default ES256): a key rotation, after
// which tokens are signed by the old and new keys in turn.
await server.issuer.keys.generate(process.env.ISSUER_ALG || 'RS256');
process.on('SIGUSR2', async () => {
  const key = await server.issuer.keys.generate(process.env.ISSUER_ROTATE_ALG || 'ES256');
  console.log(JSON.stringify({ rotated: key.kid }));
});
server.service.on('beforeTokenSigning', (token, req) => {
  if (req.body && req.body.claims) Object.assign(token.payload, JSON.parse(req.body.claims));
});
await server.start(Number(process.env.ISSUER_PORT || 0), process.env.ISSUER_HOST || '127.0.0.1');
if (process.env.ISSUER_URL) server.issuer.url = process.env.ISSUER_URL;
console.log(JSON.stringify({ url: server.issuer.url }));
