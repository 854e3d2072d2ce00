// A real OIDC issuer for the end-to-end tests: discovery, JWKS, RS256 tokens.
// POST /token (grant_type=client_credentials, aud=..., claims=<JSON>) mints a
// token whose payload gets the extra claims (sub, groups, exp …).
// Prints {"url": ...} on stdout once listening on a free port.
import { OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token, req) => {
  if (req.body && req.body.claims) Object.assign(token.payload, JSON.parse(req.body.claims));
});
await server.start(0, '127.0.0.1');
console.log(JSON.stringify({ url: server.issuer.url }));
