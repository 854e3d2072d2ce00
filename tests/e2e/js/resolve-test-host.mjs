// Preloaded with `node --import`: VEIL_TEST_HOST (e.g. veil.test) and every
// name under it resolve to 127.0.0.1 in this process, as a wildcard DNS record
// would in a deployment. Node's net module looks dns.lookup up on each connect.
import dns from 'node:dns';

const name = process.env.VEIL_TEST_HOST;
if (name) {
  const real = dns.lookup;
  dns.lookup = function lookup(host, options, callback) {
    if (host === name || host.endsWith('.' + name)) host = '127.0.0.1';
    return real.call(this, host, options, callback);
  };
}
