// The OAuth 2 / OpenID provider the medimg tests log in against: panva's
// oidc-provider, on loopback, configured from a JSON file written by
// tests/oauth_peer.py (argv[2]). Development interactions (login form that
// accepts any user name, consent form) stand in for a browser: the tests post
// them over HTTP.
//
// Access tokens for a resource (RFC 8707 `resource`, or the default audience)
// are JWTs signed HS256 with `jwt_secret`, so a FHIR server that knows the
// secret (sekmet-fhir's kv.jwt_secret) accepts them.
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${cfg.port}`;

// SMART scopes (v1 and v2 spellings) any loopback resource server grants.
const SMART_SCOPES = [
  'patient/*.read', 'patient/*.write', 'patient/*.rs', 'patient/*.cruds',
  'user/*.read', 'user/*.write', 'user/*.rs', 'user/*.cruds',
  'system/*.read', 'system/*.write', 'system/*.rs', 'system/*.cruds',
  'patient/Patient.read', 'patient/ImagingStudy.read', 'patient/DiagnosticReport.write',
  'system/Patient.read', 'system/ImagingStudy.read', 'system/DiagnosticReport.read',
  'system/DiagnosticReport.write', 'user/Patient.read', 'user/ImagingStudy.read',
  'user/DiagnosticReport.write', 'launch/patient', 'fhirUser',
].join(' ');

// Access tokens of these clients live `short_ttl` seconds, so the suite sees refresh.
const SHORT_TTL_CLIENTS = new Set(['medimg-native', 'medimg-device']);

function isLoopbackResource(indicator) {
  return /^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?(\/|$)/.test(indicator)
    || indicator.startsWith('urn:');
}

const clients = [
  {
    client_id: 'medimg-native',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    // RFC 8252 7.3: for native clients the loopback port is not compared.
    redirect_uris: ['http://127.0.0.1/callback'],
  },
  {
    client_id: 'medimg-device',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'medimg-basic',
    client_secret: cfg.basic_secret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'medimg-post',
    client_secret: cfg.post_secret,
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'medimg-rs384',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS384',
    jwks: cfg.rs384_jwks,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'medimg-es384',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES384',
    jwks: cfg.es384_jwks,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
];

const provider = new Provider(issuer, {
  clients,
  cookies: { keys: [cfg.cookie_key] },
  scopes: ['openid', 'offline_access'],
  claims: { openid: ['sub'] },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    // Dynamic registration (with an initial access token) lets a test register
    // the JWKS that `medimg login --keygen` writes, as a user gives it to the EHR.
    registration: { enabled: true, initialAccessToken: cfg.initial_access_token },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => (oneOf ? oneOf[0] : cfg.default_audience),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (!isLoopbackResource(indicator)) {
          throw new Error(`unknown resource ${indicator}`);
        }
        return {
          scope: SMART_SCOPES,
          audience: indicator,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'HS256', key: Buffer.from(cfg.jwt_secret, 'utf8') } },
        };
      },
    },
  },
  enabledJWA: {
    clientAuthSigningAlgValues: ['RS256', 'RS384', 'ES256', 'ES384', 'PS384'],
  },
  // Refresh tokens whenever the client may use them (no `offline_access` dance),
  // and always rotated (a public client's are rotated by default anyway).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: (ctx, token, client) => (
      SHORT_TTL_CLIENTS.has(client.clientId) ? cfg.short_ttl : 3600),
    ClientCredentials: () => cfg.client_credentials_ttl,
    DeviceCode: 120,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
    RefreshToken: 3600,
    AuthorizationCode: 60,
  },
  // The device flow polls; keep the interval short so the tests stay fast.
  extraParams: [],
});
provider.proxy = false;

// Device authorization response: a short polling interval for the tests.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body && cfg.device_interval) {
    ctx.body.interval = cfg.device_interval;
  }
});

provider.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(`oidc-provider listening on ${issuer}\n`);
});
