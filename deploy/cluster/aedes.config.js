// One aedes node of the cluster (aedes-cli -c aedes.config.js). Every node points at the same redis:
// retained messages and sessions live there (aedes-persistence-redis), and a message published on
// one node reaches subscribers on the others (mqemitter-redis). The port, node id and redis come
// from the environment, so the same file starts each node.
const redis = { host: '127.0.0.1', port: Number(process.env.EDGEC_REDIS_PORT || 6379) }

module.exports = {
  protos: ['tcp'],
  host: '127.0.0.1',
  port: Number(process.env.EDGEC_MQTT_PORT || 1883),
  brokerId: process.env.EDGEC_NODE_ID || 'edgec-node',
  maxClientsIdLength: 128, // edgec-<fleet>-<device> can pass MQTT 3.1.0's 23
  queueLimit: 1000,
  concurrency: 1000,
  heartbeatInterval: 60000,
  connectTimeout: 30000,
  stats: false,
  persistence: { name: 'redis', options: redis },
  // No ready check on the emitter's subscriber connection: ioredis' INFO there crashes a restarted node
  // ("only (P|S)SUBSCRIBE ... are allowed in this context").
  mq: { name: 'redis', options: { ...redis, enableReadyCheck: false } },
  verbose: false,
  veryVerbose: false,
  noPretty: true
}
