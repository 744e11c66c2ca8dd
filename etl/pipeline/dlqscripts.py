"""The dead-letter queue's Lua scripts: each runs atomically in Redis, so the byte total and the bounds hold
whatever number of processes and threads write at once.

Every script first makes sure the byte total exists: a queue written before it (by an older version) has its
entries summed once, inside the same script, so no writer can race the migration. A total beside an empty hash is
set to 0 at once. Writers that bypass the total (a process of an older version during a rolling upgrade, a manual
``DEL`` or ``HDEL``) can still leave it wrong, so ``recount`` sums the entries again from scratch: every purge runs
it (see ``DeadLetterStore.purge``), which is what heals a total that would otherwise keep the queue "full".

The scripts that only read or remove (``remove``, ``used``, ``recount``) declare ``allow-oom`` (Redis 7's script
flags), so that a Redis full at ``maxmemory`` with ``noeviction`` still runs them: ``etl dlq list`` and
``etl dlq purge`` are how an operator frees memory the dead letters hold. Their only writes are the byte total, a
single number, which a purge shrinks with the entries. ``add`` and ``replace`` grow the queue and stay unflagged,
so a full Redis refuses them.
"""

from __future__ import annotations

import redis

# What Redis spends on an entry besides its value: the hash field, the id in two sorted sets. Counted in the
# byte total so that DLQ_MAX_BYTES bounds many small entries as well as a few large ones.
ENTRY_OVERHEAD_BYTES = 256

# The first line of a script that may run on a full Redis (Redis 7 or later reads the flags from it).
_MAY_RUN_WHEN_FULL = "#!lua flags=allow-oom\n"

# Outcomes of ``add``.
STORED = 1
EXISTED = 0
DROPPED = -1

_ACCOUNTED = """
local function recount(entries, total_key, overhead)
  local sum = 0
  for _, id in ipairs(redis.call('HKEYS', entries)) do
    sum = sum + redis.call('HSTRLEN', entries, id) + overhead
  end
  redis.call('SET', total_key, sum)
  return sum
end
local function accounted(entries, total_key, overhead)
  local total = redis.call('GET', total_key)
  if not total then return recount(entries, total_key, overhead) end
  total = tonumber(total)
  if total ~= 0 and redis.call('HLEN', entries) == 0 then
    redis.call('SET', total_key, 0)
    return 0
  end
  return total
end
"""

# KEYS: entries, by_time, stage index, stages, bytes, counted, dropped, samples
# ARGV: id, value, score, stage, counter field, max bytes, max entries, overhead
_ADD = _ACCOUNTED + """
local id, value, field = ARGV[1], ARGV[2], ARGV[5]
local overhead = tonumber(ARGV[8])
if redis.call('HEXISTS', KEYS[1], id) == 1 then
  redis.call('ZADD', KEYS[2], 'GT', ARGV[3], id)
  redis.call('ZADD', KEYS[3], 'GT', ARGV[3], id)
  return 0
end
redis.call('HINCRBY', KEYS[6], field, 1)
local cost = string.len(value) + overhead
local used = accounted(KEYS[1], KEYS[5], overhead)
local sample = redis.call('HGET', KEYS[8], field)
local has_sample = sample and redis.call('HEXISTS', KEYS[1], sample) == 1
local full = used + cost > tonumber(ARGV[6]) or redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[7])
if full and has_sample then
  redis.call('HINCRBY', KEYS[7], field, 1)
  return -1
end
redis.call('HSET', KEYS[1], id, value)
redis.call('INCRBY', KEYS[5], cost)
redis.call('ZADD', KEYS[2], ARGV[3], id)
redis.call('ZADD', KEYS[3], ARGV[3], id)
redis.call('SADD', KEYS[4], ARGV[4])
if not has_sample then redis.call('HSET', KEYS[8], field, id) end
return 1
"""

# KEYS: entries, bytes. ARGV: id, new value, overhead. An existing entry's value replaced, the total following.
_REPLACE = _ACCOUNTED + """
accounted(KEYS[1], KEYS[2], tonumber(ARGV[3]))
local old = redis.call('HSTRLEN', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], string.len(ARGV[2]) - old)
return 1
"""

# KEYS: entries, by_time, bytes, every stage index. ARGV: overhead, ids...
_REMOVE = _MAY_RUN_WHEN_FULL + _ACCOUNTED + """
local overhead = tonumber(ARGV[1])
accounted(KEYS[1], KEYS[3], overhead)
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local size = redis.call('HSTRLEN', KEYS[1], id)
  if redis.call('HDEL', KEYS[1], id) == 1 then
    removed = removed + 1
    redis.call('DECRBY', KEYS[3], size + overhead)
  end
  redis.call('ZREM', KEYS[2], id)
  for k = 4, #KEYS do redis.call('ZREM', KEYS[k], id) end
end
return removed
"""

# KEYS: entries, bytes. ARGV: overhead.
_USED = _MAY_RUN_WHEN_FULL + _ACCOUNTED + """
return accounted(KEYS[1], KEYS[2], tonumber(ARGV[1]))
"""

# KEYS: entries, bytes. ARGV: overhead. The total summed from the entries, whatever it was.
_RECOUNT = _MAY_RUN_WHEN_FULL + _ACCOUNTED + """
return recount(KEYS[1], KEYS[2], tonumber(ARGV[1]))
"""


class Scripts:
    """The scripts registered on one client (redis-py loads each once, then calls it by its SHA)."""

    def __init__(self, client: redis.Redis) -> None:
        self.add = client.register_script(_ADD)
        self.replace = client.register_script(_REPLACE)
        self.remove = client.register_script(_REMOVE)
        self.used = client.register_script(_USED)
        self.recount = client.register_script(_RECOUNT)
