// Bounded load on `dreamllm serve` over loopback (CTest server_load; about 15 s on 2 cores).
//   node tests/server/load.mjs [--requests 1000] [--concurrency 16] [--parallel 2]
// Starts its own server on a free 127.0.0.1 port, sends a fixed mix of requests (chat with a picture, streamed
// chat, clients that leave mid-stream, image generation, health and model listings, malformed JSON, unknown
// models), then stops the server with SIGTERM. Reports failures (anything but the status each request should get;
// 503 counts as intended load shedding), the server's resident memory after warm-up and at the end, requests/s,
// and checks that no slot is left busy. Exits 1 on a failure.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, stopServer, cli, sleep, MODEL_ID, WORK } from './common.mjs';

const arg = (name, value) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : value;
};
const REQUESTS = arg('requests', 1000);
const CONCURRENCY = arg('concurrency', 16);
const PARALLEL = arg('parallel', 2);
const WARMUP = Math.min(100, Math.floor(REQUESTS / 10));

const scene = path.join(WORK, 'load-scene.png');
cli(['world', 'render', '--size', '36', '-p', 'a small blue circle at the bottom left', '-o', scene]);
const sceneUri = 'data:image/png;base64,' + readFileSync(scene).toString('base64');

const server = await startServer(['--parallel', String(PARALLEL), '--max-queue', '64', '--queue-timeout', '30']);
const rss = () => {
  const status = readFileSync(`/proc/${server.proc.pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+)/)[1]) / 1024;
};
const post = (route, body, signal) => fetch(server.url + route, {
  method: 'POST', signal, headers: { 'Content-Type': 'application/json' },
  body: typeof body === 'string' ? body : JSON.stringify(body),
});
const question = (extra = {}) => ({
  model: MODEL_ID, temperature: 0, max_tokens: 8,
  messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: sceneUri } }, { type: 'text', text: 'What colour is the circle?' }] }],
  ...extra,
});

const answers = new Set();
// Each kind: how to send it, and the statuses it should get.
const kinds = [
  {
    // Every greedy answer to the same question is the same, whichever slot computed it next to which others.
    name: 'chat', weight: 35, ok: [200, 'same'],
    run: async () => {
      const r = await post('/v1/chat/completions', question());
      if (r.status !== 200) return r.status;
      const content = (await r.json()).choices[0].message.content;
      answers.add(content);
      return answers.size === 1 ? 'same' : `answer differs: ${JSON.stringify(content)}`;
    },
  },
  {
    name: 'chat-stream', weight: 20, ok: [200],
    run: async () => {
      const r = await post('/v1/chat/completions', question({ stream: true }));
      const text = await r.text();
      return r.status === 200 && !text.endsWith('data: [DONE]\n\n') ? 'truncated stream' : r.status;
    },
  },
  {
    name: 'leave-mid-stream', weight: 5, ok: [200, 'left'],
    run: async () => {
      const c = new AbortController();
      const r = await post('/v1/documents', { model: MODEL_ID, prompt: 'Build a picture with three shapes step by step.', steps: 50, max_images: 4 }, c.signal);
      if (r.status !== 200) return r.status;
      const reader = r.body.getReader();
      await reader.read();
      c.abort();
      return 'left';
    },
  },
  {
    name: 'image', weight: 10, ok: [200],
    run: async () => (await post('/v1/images/generations', { model: MODEL_ID, prompt: 'a small red square at the center', steps: 4, sampler: 'dpmpp2m', guidance: 3, seed: 1 })).status,
  },
  { name: 'health', weight: 10, ok: [200], run: async () => (await fetch(server.url + '/health')).status },
  { name: 'models', weight: 5, ok: [200], run: async () => (await fetch(server.url + '/v1/models')).status },
  { name: 'bad-json', weight: 8, ok: [400], run: async () => (await post('/v1/chat/completions', '{"model": ')).status },
  { name: 'unknown-model', weight: 7, ok: [404], run: async () => (await post('/v1/chat/completions', { ...question(), model: 'nope' })).status },
];
const plan = [];
let seed = 12345;
const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const total = kinds.reduce((a, k) => a + k.weight, 0);
for (let i = 0; i < REQUESTS; i++) {
  let x = random() * total;
  plan.push(kinds.find((k) => (x -= k.weight) < 0) ?? kinds[0]);
}

const counts = {};
const failures = [];
let next = 0;
let done = 0;
let rssWarm = null;
const rssSamples = [];
const started = performance.now();
async function worker() {
  while (next < plan.length) {
    const kind = plan[next++];
    let status;
    try {
      status = await kind.run();
    } catch (e) {
      status = `exception ${e.cause?.code ?? e.message}`;
    }
    const key = `${kind.name} ${status}`;
    counts[key] = (counts[key] ?? 0) + 1;
    if (!kind.ok.includes(status) && status !== 503) failures.push(key);
    if (++done === WARMUP) rssWarm = rss();
    if (done % Math.max(1, Math.floor(REQUESTS / 5)) === 0) rssSamples.push(`${done}: ${rss().toFixed(1)}`);
  }
}
await Promise.all(Array.from({ length: CONCURRENCY }, worker));
const seconds = (performance.now() - started) / 1000;
// A client that left is noticed at its request's next event: give the last ones time to stop (seconds under a
// sanitizer build), then look.
let health = null;
for (let i = 0; i < 300; i++) {
  health = await (await fetch(server.url + '/health')).json();
  if (health.slots_busy === 0 && health.queued === 0) break;
  await sleep(100);
}
const rssEnd = rss();
const code = await stopServer(server);

console.log(`requests ${REQUESTS}, concurrency ${CONCURRENCY}, --parallel ${PARALLEL}: ${seconds.toFixed(1)} s, ${(REQUESTS / seconds).toFixed(1)} requests/s`);
for (const [k, n] of Object.entries(counts).sort()) console.log(`  ${k}: ${n}`);
console.log(`resident memory: ${rssWarm?.toFixed(1)} MiB after ${WARMUP} requests (warm-up), ${rssEnd.toFixed(1)} MiB at the end; along the run (requests: MiB) ${rssSamples.join(', ')}`);
console.log(`slots busy after the run: ${health.slots_busy}, queued: ${health.queued}; exit code after SIGTERM: ${code}`);
console.log(`failures: ${failures.length}`);
if (failures.length) console.log('  ' + [...new Set(failures)].join('\n  '));
process.exit(failures.length || health.slots_busy || health.queued || code !== 0 ? 1 : 0);
