// BullMQ in bench.peers: Queue.add, Queue.addBulk (1000 per call), a Worker with a no-op processor.
// Parameters in BENCH_PEERS_PARAMS (JSON); the protocol is bench/peers_child.py's. Run with
// NODE_PATH pointing at the scratch install's node_modules (bullmq, ioredis).
'use strict';
const { Queue, Worker } = require('bullmq');
const readline = require('node:readline');

const MARK = '@@peers ';
const BULK = 1000;
const p = JSON.parse(process.env.BENCH_PEERS_PARAMS);
const url = new URL(p.redis);
const connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  db: Number(url.pathname.slice(1) || 0),
  maxRetriesPerRequest: null,
};
const prefix = p.prefix;
const concurrency = Number(p.bullmq_concurrency || 50);

const send = (obj) => process.stdout.write(MARK + JSON.stringify(obj) + '\n');
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function gate(phase) {
  send({ event: 'ready', phase });
  const { value, done } = await lines.next();
  if (done || value.trim() !== 'go') process.exit(0);
}
const pct = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.round((q / 100) * (s.length - 1)))] : 0;
};
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const round = (x, d) => Math.round(x * 10 ** d) / 10 ** d;

async function main() {
  let phase = 'setup';
  let queue;
  let worker;
  try {
    queue = new Queue('bench', { connection, prefix });
    await queue.waitUntilReady();
    let ran = 0;
    let finished = null;
    const total = p.single + p.jobs;
    worker = new Worker('bench', async (job) => job.data.i, { connection, prefix, concurrency, autorun: false });
    worker.on('completed', () => {
      ran += 1;
      if (ran === total && finished) finished();
    });
    await worker.waitUntilReady();
    send({ event: 'done', phase, result: {} });

    phase = 'single';
    await gate(phase);
    const lat = [];
    let t0 = now();
    for (let i = 0; i < p.single; i++) {
      const s = now();
      await queue.add('noop', { i });
      lat.push(now() - s);
    }
    let dt = (now() - t0) / 1000;
    send({
      event: 'done',
      phase,
      result: {
        jobs: p.single, seconds: round(dt, 3), per_s: round(p.single / dt, 1),
        p50_ms: round(pct(lat, 50), 3), p99_ms: round(pct(lat, 99), 3),
      },
    });

    phase = 'bulk';
    await gate(phase);
    const calls = [];
    t0 = now();
    for (let start = p.single; start < total; start += BULK) {
      const jobs = [];
      for (let i = start; i < Math.min(start + BULK, total); i++) jobs.push({ name: 'noop', data: { i } });
      const s = now();
      await queue.addBulk(jobs);
      calls.push(now() - s);
    }
    dt = (now() - t0) / 1000;
    send({
      event: 'done',
      phase,
      result: {
        jobs: p.jobs, calls: calls.length, seconds: round(dt, 3), per_s: round(p.jobs / dt, 1),
        p50_ms_per_call: round(pct(calls, 50), 2),
      },
    });

    phase = 'drain';
    await gate(phase);
    const allDone = new Promise((resolve) => { finished = resolve; });
    t0 = now();
    worker.run().catch((e) => send({ event: 'error', phase, error: String(e) }));
    await allDone;
    dt = (now() - t0) / 1000;
    send({ event: 'done', phase, result: { jobs: total, ran, seconds: round(dt, 3), per_s: round(total / dt, 1) } });
    phase = 'close';
    await worker.close();
    await queue.close();
    send({ event: 'end' });
    process.exit(0);
  } catch (e) {
    send({ event: 'error', phase, error: `${e && e.name}: ${e && e.message}`, traceback: String(e && e.stack) });
    process.exit(1);
  }
}

main();
