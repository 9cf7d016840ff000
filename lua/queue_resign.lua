-- queue_resign: give up the admission leader lease of one event (a clean shutdown), so that
-- another worker takes over at its next tick instead of after the lease expiry.
-- KEYS[1] q:lease STRING leader id
-- ARGV[1] leader id
-- Returns 1 when the lease was ours and is released, else 0.
-- Keeps: only the holder can release its lease (compare-and-delete).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
