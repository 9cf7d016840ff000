-- snapshot: everything a gateway worker needs to (re)build its availability snapshot,
-- read at one instant.
-- KEYS:  the 14 event keys of common.lua (reads meta, sold, held, changes, ga only).
-- ARGV:  none.
-- Returns a flat array (bitmaps are binary, so no JSON):
--   {sold bytes, held bytes, version, last change stream id or '0-0', status, ga HGETALL array}
-- Read-only.
--!include common

local last = redis.call('XREVRANGE', K_CHANGES, '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
return {redis.call('GET', K_SOLD) or '', redis.call('GET', K_HELD) or '',
        tonumber(redis.call('HGET', K_META, 'version')) or 0, last_id,
        redis.call('HGET', K_META, 'status') or '', redis.call('HGETALL', K_GA)}
