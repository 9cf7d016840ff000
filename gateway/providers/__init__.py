"""External providers (payments, notifications) and the isolation around them.

Every provider call goes through a circuit breaker whose state is shared by all
processes through Redis (`breaker`), a bounded number of concurrent calls
(`bulkhead`), short timeouts and, for idempotent calls only, retries.
"""
