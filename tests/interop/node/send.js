#!/usr/bin/env node
// Sends COUNT records to a Fluentd forward endpoint with npm fluent-logger,
// asking for an ack on every chunk.
//
//   node send.js HOST PORT TAG COUNT [MODE]
//
// MODE is the library's eventMode: Message (default; one ack per record),
// PackedForward or CompressedPackedForward (records batched into chunks,
// one ack per chunk). Each record is {"seq": i, "msg": "..."}. Exits 0 once
// every emit callback reported success, 1 on any error or on timeout, 2 on
// bad arguments.
//
// With FLUENT_SHARED_KEY set, the sender does the <security> handshake
// with that shared_key, as hostname FLUENT_HOSTNAME (default "node-app"),
// the way an app that keeps its own shared_key does.
'use strict';

const logger = require('fluent-logger');

const TOTAL_TIMEOUT_MS = 60000;
const ACK_TIMEOUT_MS = 10000;

function fail(message) {
  console.error(`send.js: ${message}`);
  process.exit(1);
}

const [host, portArg, tag, countArg, mode = 'Message'] = process.argv.slice(2);
const port = Number(portArg);
const count = Number(countArg);
if (!host || !tag || !Number.isInteger(port) || !Number.isInteger(count) || count < 0) {
  console.error('usage: node send.js HOST PORT TAG COUNT [Message|PackedForward|CompressedPackedForward]');
  process.exit(2);
}
if (!['Message', 'PackedForward', 'CompressedPackedForward'].includes(mode)) {
  console.error(`send.js: unknown mode ${mode}`);
  process.exit(2);
}

const security = process.env.FLUENT_SHARED_KEY
  ? { clientHostname: process.env.FLUENT_HOSTNAME || 'node-app', sharedKey: process.env.FLUENT_SHARED_KEY }
  : undefined;

const sender = logger.createFluentSender(tag, {
  host,
  port,
  security,
  eventMode: mode,
  requireAckResponse: true,
  ackResponseTimeout: ACK_TIMEOUT_MS,
  // Fail instead of quietly retrying in 10 minutes.
  enableReconnect: false,
});
// Socket errors are reported here, not always to an emit callback.
sender.on('error', (err) => fail(`fluent-logger error: ${err && err.stack ? err.stack : err}`));

let acked = 0;
const watchdog = setTimeout(
  () => fail(`timed out after ${TOTAL_TIMEOUT_MS} ms: ${acked} of ${count} records acknowledged`),
  TOTAL_TIMEOUT_MS,
);
// If the event loop runs dry with records outstanding (e.g. the connection
// closed under a pending ack), that is a failure, not a clean exit.
process.on('beforeExit', () => {
  if (acked !== count) fail(`stopped with ${acked} of ${count} records acknowledged`);
});

function done() {
  clearTimeout(watchdog);
  sender.end(null, null, () => {
    console.log(`sent ${count} records with tag ${tag} to ${host}:${port} (${mode}), all acknowledged`);
  });
}

if (count === 0) done();
for (let i = 0; i < count; i++) {
  const record = { seq: i, msg: `hello from node fluent-logger, record ${i}` };
  // No label: the tag is exactly TAG. The callback runs once the receiver
  // acked the chunk holding this record.
  sender.emit(record, (err) => {
    if (err) fail(`record ${i}: ${err && err.stack ? err.stack : err}`);
    acked += 1;
    if (acked === count) done();
  });
}
