// Speed of `dreamllm serve` on the shapes-world model over loopback (docs/benchmarks.md): requests/s and time to
// first token of streamed chat requests (a picture and a question, greedy, as the load test sends them) at
// concurrency 1, 4 and 16, with --parallel 1 and 4; then 4 answers through the server against 4 sequential
// `dreamllm ask` runs. Not a test; run under the build lock on an otherwise idle machine:
//   flock /tmp/dl-build.lock node tests/server/bench.mjs [--requests 200]
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { startServer, stopServer, cli, DREAMLLM, MODEL, MODEL_ID, WORK } from './common.mjs';

const i = process.argv.indexOf('--requests');
const REQUESTS = i > 0 ? Number(process.argv[i + 1]) : 200;
const scene = path.join(WORK, 'bench-scene.png');
cli(['world', 'render', '--size', '36', '-p', 'a large yellow triangle at the center', '-o', scene]);
const sceneUri = 'data:image/png;base64,' + readFileSync(scene).toString('base64');
const QUESTION = 'What colour is the triangle?';
const body = (max_tokens) => JSON.stringify({
  model: MODEL_ID, temperature: 0, max_tokens, stream: true, stream_options: { include_usage: true },
  messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: sceneUri } }, { type: 'text', text: QUESTION }] }],
});

// One streamed request: seconds to the first content delta, to the end, and the completion tokens.
async function streamed(url, max_tokens) {
  const t0 = performance.now();
  const r = await fetch(url + '/v1/chat/completions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body(max_tokens) });
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  let first = null;
  let tokens = 0;
  let buffer = '';
  const decoder = new TextDecoder();
  for await (const chunk of r.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const data = buffer.slice(6, end);
      buffer = buffer.slice(end + 2);
      if (data === '[DONE]') continue;
      const e = JSON.parse(data);
      if (e.usage) tokens = e.usage.completion_tokens;
      if (first === null && e.choices?.[0]?.delta?.content) first = performance.now();
    }
  }
  const t1 = performance.now();
  return { ttft: ((first ?? t1) - t0) / 1000, total: (t1 - t0) / 1000, tokens };
}

async function run(url, concurrency, requests, max_tokens) {
  const results = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < requests) {
      next++;
      results.push(await streamed(url, max_tokens));
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  const ttft = results.map((r) => r.ttft).sort((a, b) => a - b);
  const q = (p) => ttft[Math.min(ttft.length - 1, Math.floor(p * ttft.length))] * 1000;
  const tokens = results.reduce((a, r) => a + r.tokens, 0);
  return { seconds, rps: requests / seconds, ttft50: q(0.5), ttft90: q(0.9), tokens, tps: tokens / seconds };
}

console.log(`| --parallel | concurrency | requests | requests/s | TTFT median (ms) | TTFT p90 (ms) |`);
console.log(`|---:|---:|---:|---:|---:|---:|`);
for (const parallel of [1, 4]) {
  const server = await startServer(['--parallel', String(parallel), '--max-queue', '64']);
  await run(server.url, 2, 20, 8);  // warm-up
  for (const c of [1, 4, 16]) {
    const r = await run(server.url, c, REQUESTS, 8);
    console.log(`| ${parallel} | ${c} | ${REQUESTS} | ${r.rps.toFixed(1)} | ${r.ttft50.toFixed(1)} | ${r.ttft90.toFixed(1)} |`);
  }
  await stopServer(server);
}

// Four answers of at most 64 tokens: the server with --parallel 4 (one request each, at once) against four
// sequential `dreamllm ask` runs (each loads the model).
const server = await startServer(['--parallel', '4']);
await run(server.url, 4, 8, 64);
const s = await run(server.url, 4, 4, 64);
await stopServer(server);
const t0 = performance.now();
for (let k = 0; k < 4; k++)
  execFileSync(DREAMLLM, ['ask', '-m', MODEL, '--template', 'train', '-t', '2', '-i', scene, '-p', QUESTION, '-n', '64'], { stdio: 'ignore' });
const cliSeconds = (performance.now() - t0) / 1000;
console.log(`\n4 answers (at most 64 tokens each): server --parallel 4, 4 at once: ${s.seconds.toFixed(3)} s, ` +
            `${s.tokens} tokens, ${s.tps.toFixed(1)} tokens/s; 4 sequential dreamllm ask runs: ${cliSeconds.toFixed(3)} s`);
