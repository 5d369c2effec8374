#!/usr/bin/env node
// Sends COUNT records to a Fluentd forward endpoint with npm
// @fluent-org/logger (PackedForward, its default), waiting for the
// server's ack of every event.
//
//   node send-org.js HOST PORT TAG COUNT
//
// Each record is {"seq": i, "msg": "..."}. Exits 0 once every emit promise
// resolved (acked), 1 on any error or on timeout, 2 on bad arguments.
'use strict';

const { FluentClient } = require('@fluent-org/logger');

const TOTAL_TIMEOUT_MS = 60000;

function fail(message) {
  console.error(`send-org.js: ${message}`);
  process.exit(1);
}

const [host, portArg, tag, countArg] = process.argv.slice(2);
const port = Number(portArg);
const count = Number(countArg);
if (!host || !tag || !Number.isInteger(port) || !Number.isInteger(count) || count < 0) {
  console.error('usage: node send-org.js HOST PORT TAG COUNT');
  process.exit(2);
}

const watchdog = setTimeout(() => fail(`timed out after ${TOTAL_TIMEOUT_MS} ms`), TOTAL_TIMEOUT_MS);

const client = new FluentClient(null, {
  socket: { host, port },
  ack: { ackTimeout: 10000 },
  eventMode: 'PackedForward',
});
client.socketOn('error', (err) => fail(`socket error: ${err && err.stack ? err.stack : err}`));

(async () => {
  const pending = [];
  for (let i = 0; i < count; i++) {
    pending.push(client.emit(tag, { seq: i, msg: `record ${i} from @fluent-org/logger` }));
  }
  try {
    await Promise.all(pending);
  } catch (err) {
    fail(`emit failed: ${err && err.stack ? err.stack : err}`);
  }
  clearTimeout(watchdog);
  console.log(`sent ${count} records, every one acknowledged`);
  await client.disconnect();
  process.exit(0);
})();
