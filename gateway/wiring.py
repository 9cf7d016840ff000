"""The composition root: every service of a process, built once from settings.

Each process builds what it needs here and nowhere else: the gateway builds a
`Gateway` (in the app lifespan), each background worker and CLI command a
`Runtime` plus the few services it uses. Services get what they need in their
constructors; nothing is looked up by name or attached after construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.api.clientip import ClientAddresses
from gateway.api.sybil import AddressKeys, MintLimits
from gateway.core.config import Settings
from gateway.core.runtime import Runtime
from gateway.core.tokens import TokenSigner
from gateway.orders.confirmations import Confirmations
from gateway.orders.service import Orders
from gateway.organisers.events import EventAdmin
from gateway.organisers.live import LiveFigures
from gateway.organisers.live_feed import LiveStreams
from gateway.organisers.orgs import ApiKeys
from gateway.organisers.public import PublicEvents
from gateway.providers.payments import GuardedProvider, build_payment_provider
from gateway.sale.checkout import Checkout, CheckoutRecovery
from gateway.sale.holds import Holds
from gateway.sale.snapshots import SnapshotManager
from gateway.scanning.admin import DoorAdmin
from gateway.scanning.devices import Devices
from gateway.scanning.service import Scanning
from gateway.waiting_room.admin import QueueAdmin
from gateway.waiting_room.cache import QueueCache
from gateway.waiting_room.gate import BuyerGate
from gateway.waiting_room.pow import ProofOfWork
from gateway.waiting_room.room import WaitingRoom


@dataclass(frozen=True, slots=True)
class Gateway:
    """Everything one gateway worker process serves with."""

    runtime: Runtime
    signer: TokenSigner
    snapshots: SnapshotManager
    queue_cache: QueueCache
    gate: BuyerGate
    room: WaitingRoom
    pow: ProofOfWork  # on joining, when switched on (gateway/waiting_room/pow.py)
    queue_admin: QueueAdmin
    holds: Holds
    payments: GuardedProvider
    checkout: Checkout
    orders: Orders
    events: EventAdmin
    public: PublicEvents
    api_keys: ApiKeys
    addresses: ClientAddresses
    mint: MintLimits  # buyer tokens per address and prefix (gateway/api/sybil.py)
    live: LiveFigures
    live_streams: LiveStreams
    scanning: Scanning
    door: DoorAdmin

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    async def start(self) -> None:
        try:
            await self.runtime.scripts.load_all()
        except Exception:  # Redis not reachable yet: scripts load on first use (NOSCRIPT path)
            pass
        self.snapshots.start()
        self.queue_cache.start()
        self.live.start()
        self.scanning.start()

    async def stop(self) -> None:
        await self.live_streams.stop()
        await self.live.stop()
        await self.snapshots.stop()
        await self.queue_cache.stop()
        await self.scanning.stop()
        await self.payments.aclose()
        await self.runtime.close()


def build_gateway(settings: Settings) -> Gateway:
    runtime = Runtime.from_settings(settings)
    s = settings
    signer = TokenSigner(s.secret_bytes)
    snapshots = SnapshotManager(redis=runtime.redis, scripts=runtime.scripts, prefix=s.redis_prefix,
                                refresh_s=s.snapshot_refresh_s, stale_after_s=s.snapshot_stale_after_s)
    queue_cache = QueueCache(settings=s, redis=runtime.redis)
    queue_admin = QueueAdmin(runtime, queue_cache)
    payments = build_payment_provider(runtime)
    confirmations = Confirmations(runtime)
    live = LiveFigures(runtime, pacing=payments)
    devices = Devices(redis=runtime.redis, prefix=s.redis_prefix, signer=signer)
    addresses = ClientAddresses(s.trusted_proxies)
    address_keys = AddressKeys(s, addresses)
    holds = Holds(scripts=runtime.scripts, snapshots=snapshots, prefix=s.redis_prefix, max_seats=s.max_seats_per_hold,
                  address_keys=address_keys, per_address_factor=s.holds_per_address_factor)
    snapshots.after_refresh = holds.give_back_all  # holds an outage's 503s left behind, whoever comes back
    return Gateway(
        runtime=runtime,
        signer=signer,
        snapshots=snapshots,
        queue_cache=queue_cache,
        gate=BuyerGate(signer=signer, cache=queue_cache),
        room=WaitingRoom(settings=s, scripts=runtime.scripts, signer=signer, cache=queue_cache),
        pow=ProofOfWork(s, signer),
        queue_admin=queue_admin,
        holds=holds,
        payments=payments,
        checkout=Checkout(redis=runtime.redis, scripts=runtime.scripts, snapshots=snapshots, provider=payments,
                          signer=signer, sealer=runtime.sealer, prefix=s.redis_prefix, confirmations=confirmations,
                          capture_on_authorize=s.payments.capture_on_authorize),
        orders=Orders(runtime, signer=signer, snapshots=snapshots, provider=payments, confirmations=confirmations),
        events=EventAdmin(runtime, snapshots=snapshots, queue=queue_admin),
        public=PublicEvents(runtime, snapshots=snapshots),
        api_keys=ApiKeys(runtime),
        addresses=addresses,
        mint=MintLimits(s, address_keys),
        live=live,
        live_streams=LiveStreams(live),
        scanning=Scanning(redis=runtime.redis, scripts=runtime.scripts, prefix=s.redis_prefix, sealer=runtime.sealer,
                          devices=devices, journal_dir=s.data_dir / "scan-journal"),
        door=DoorAdmin(runtime, devices),
    )


def build_recovery(runtime: Runtime) -> tuple[CheckoutRecovery, GuardedProvider]:
    """What the expiry worker needs to refund interrupted checkouts (close the provider at the end)."""
    payments = build_payment_provider(runtime)
    return CheckoutRecovery(redis=runtime.redis, provider=payments, prefix=runtime.prefix), payments
