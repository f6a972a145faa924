/** Broker endpoints: which ones a worker can connect to, and a bind address as one it can reach. */

const CONNECT = /^(tcp:\/\/([^\s:[\]]+|\[[0-9A-Fa-f:.]+\]):\d+|ipc:\/\/\S+|inproc:\/\/\S+)$/; // [::1]: IPv6
const BIND = /^(tcp|ipc|inproc|pgm|epgm|ws|wss|tipc|vmci|udp):\/\/\S+$/; // conf/checks.py's `endpoint`
const WILDCARDS = ["tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"];

/** True for `tcp://HOST:PORT`, `ipc://PATH`, `inproc://NAME`; with `bind`, anything shoal.toml's `bind` takes. */
export function isEndpoint(value: unknown, bind = false): value is string {
  return typeof value === "string" && (bind ? BIND : CONNECT).test(value);
}

/** Whether the endpoint's host is an IPv6 address (`tcp://[::1]:5555`): its socket needs `ipv6` on. Names and
 * IPv4 addresses keep it off and resolve as they always did (shoal/sockets.py's `ipv6_ready`). */
export function isIpv6(endpoint: string): boolean {
  return endpoint.startsWith("tcp://[");
}

/** A bind endpoint as a peer connects to it: a wildcard host means this machine (as shoal.endpoints does). */
export function connectable(bind: string): string {
  const wildcard = WILDCARDS.find((w) => bind.startsWith(w));
  return wildcard === undefined ? bind : `tcp://127.0.0.1:${bind.slice(wildcard.length)}`;
}
