// Load generator for bench/chat.py (a) and (b): Node's WebSocket client (undici),
// a lower floor than any Python client on this machine. Node 20 needs
// `--experimental-websocket`; bench/chat.py falls back to Python when node is absent.
//
//   node --experimental-websocket chat_client.mjs paced URL N SECONDS
//   node --experimental-websocket chat_client.mjs burst URL N PER ROUNDS
// Prints one JSON line with the same fields as the Python client.

const [mode, url, ...rest] = process.argv.slice(2);
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms, one clock for send and receive
const pct = (sorted, q) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.round((q / 100) * (sorted.length - 1)))] : NaN;
const sentAt = (data) => +data.slice(data.lastIndexOf(" ") + 1);

function open(n, onmessage) {
  return Promise.all(Array.from({length: n}, (_, i) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onopen = () => resolve(ws);
    ws.onerror = (e) => reject(new Error(`socket ${i}: ${e.message || "error"}`));
    ws.onmessage = (e) => onmessage(i, e.data);
  })));
}

async function paced(n, seconds) {
  const lat = [];
  let start = Infinity, end = Infinity;
  const socks = await open(n, (_, data) => {
    const t = now(), sent = sentAt(data);
    // Stamps are rounded to 0.1 µs: a message sent just before `end` may read `end`.
    if (sent >= start && sent <= end + 0.001) lat.push(t - sent);
  });
  start = now() + 1000;
  end = start + seconds * 1000;
  let sent = 0;
  socks.forEach((ws, i) => {
    const phase = Math.random() * 1000;
    for (let k = 0; start + phase + k * 1000 < end; k++) {
      setTimeout(() => {
        const t = now();
        if (t < end) { ws.send(`${i} ${k} ${t.toFixed(4)}`); sent++; }
      }, start + phase + k * 1000 - now());
    }
  });
  await new Promise((r) => setTimeout(r, end - now() + 100));
  const deadline = end + 10000;
  while (lat.length < sent * n && now() < deadline) await new Promise((r) => setTimeout(r, 50));
  lat.sort((a, b) => a - b);
  return {sent, deliveries: lat.length, expected: sent * n, per_s: lat.length / seconds,
          p50_ms: pct(lat, 50), p99_ms: pct(lat, 99), max_ms: lat[lat.length - 1]};
}

async function burst(n, per, rounds) {
  let got, last, lat, expected, resolveDone;
  const socks = await open(n, (i, data) => {
    const t = now();
    got[i]++;
    last[i] = t;
    lat.push(t - sentAt(data));
    if (got.every((g) => g >= expected)) resolveDone();
  });
  const results = [];
  for (let r = 0; r < rounds; r++) {
    expected = n * per;
    got = new Array(n).fill(0);
    last = new Array(n).fill(0);
    lat = [];
    const done = new Promise((resolve) => { resolveDone = resolve; });
    await new Promise((res) => setTimeout(res, 200));
    const t0 = now();
    socks.forEach((ws, i) => { for (let k = 0; k < per; k++) ws.send(`${i} ${k} ${now().toFixed(4)}`); });
    await Promise.race([done, new Promise((res) => setTimeout(res, 60000))]);
    const total = got.reduce((a, b) => a + b, 0);
    const seconds = (Math.max(...last) - t0) / 1000;
    lat.sort((a, b) => a - b);
    results.push({round: r + 1, deliveries: total, expected: n * expected, seconds,
                  per_s: total / seconds, p50_ms: pct(lat, 50), p99_ms: pct(lat, 99)});
    await new Promise((res) => setTimeout(res, 500));
  }
  return {rounds: results};
}

const result = mode === "paced" ? await paced(+rest[0], +rest[1]) : await burst(+rest[0], +rest[1], +rest[2]);
console.log(JSON.stringify(result));
process.exit(0);
