// A real OpenID Connect provider (panva's oidc-provider) for keybroker's tests, over HTTPS on loopback.
// Started by tests/helpers/oidc.py with one argument: a JSON file (issuer, port, TLS files, signing
// keys, clients, accounts). Its login page is oidc-provider's own dev interaction: the login name
// picks an account from the file (any password), then a consent step.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import Provider, { errors } from 'oidc-provider';

const conf = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const provider = new Provider(conf.issuer, {
  clients: conf.clients,
  jwks: conf.jwks,
  cookies: { keys: [conf.cookie_key] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // the claims of the requested scopes in the ID token itself (keybroker reads the ID token)
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    const account = conf.accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: account.sub, email: account.email, email_verified: true, name: account.name, groups: account.groups };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      async getResourceServerInfo(_ctx, resource) {
        if (resource !== conf.api_audience) throw new errors.InvalidTarget();
        return {
          scope: 'api',
          audience: conf.api_audience,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  async extraTokenClaims(_ctx, token) {
    if (token.kind === 'ClientCredentials') return { groups: conf.client_groups[token.clientId] || [] };
    const account = Object.values(conf.accounts).find((a) => a.sub === token.accountId);
    return account ? { groups: account.groups, email: account.email } : undefined;
  },
  pkce: { required: () => true },
  ttl: { IdToken: conf.id_token_ttl, AccessToken: 600, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600 },
});

const server = https.createServer(
  { cert: readFileSync(conf.cert), key: readFileSync(conf.key) },
  provider.callback(),
);
server.listen(conf.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening at ${conf.issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
