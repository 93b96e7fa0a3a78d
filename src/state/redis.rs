//! The state store on Redis (or Tair), shared by every replica.
//!
//! Each change is one Lua script, so it is atomic, and reads the time from Redis (`TIME`), so
//! the replicas' clocks do not matter. A claim's keys (the key's record and its caller's index)
//! share one hash tag, the caller; an instance's lock is a key of its own.
//!
//! Round trips: an upgrade with a key takes three, each one script on both slots (claim and
//! lock, the send marks, settle and unlock), and a replay one. Redis Cluster and Tair's proxy
//! mode refuse a script on several slots (CROSSSLOT, before running anything): the first such
//! answer switches the store to one single-slot script per step, as correct but with a round
//! trip each.
//!
//! A key's record is a hash: `fp` (the request's fingerprint), `owner` and `until` (the holder's
//! token and lease), `sent` (when the holder marked that it is about to send), `since` (when a
//! send with a still unknown outcome was marked), `answer` and `reconciled` (the accepted
//! answer). A holder whose lease ran out is replaced by the next claimer; its `sent` mark, if any,
//! makes the key unresolved.
//!
//! An instance's lock is a hash too: `owner` and `until`, `sent` when its holder marked a send,
//! `since` for an earlier holder's send with a still unknown outcome. It lives as long as its
//! lease, and while a send on it is within the settle window: a newcomer that finds a lapsed
//! holder's send mark is told how long ago it was, never handed the lock blindly.
//!
//! Ages are taken on Redis's clock, from marks that an earlier primary's clock may have written:
//! a negative age (that clock was ahead) is 0, never "not sent".

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::pb;
use crate::state::store::Accepted;
use crate::state::store::{
    self, Claim, Fingerprint, Hold, InstanceLock, Key, Settlement, StateStore, StoreError,
    StoreLimits, Token,
};

use crate::config::{RedisCa, RedisUrl};

/// How long one Redis command may take before the store counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two looks at a key another holder has.
const MAX_POLL: Duration = Duration::from_millis(250);

/// `now` in milliseconds from Redis's own clock.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// The scripts' steps, as functions of their keys, so that one script can take several steps
/// on keys of different slots where the server allows it (see [`RedisStore::multi_slot`]).
///
/// `keep` keeps a key's `record` for `ms` and notes its expiry in the caller's `index`.
///
/// `claim` answers `{'owner', age, replaced holder}`, `{'replay', answer, reconciled}`,
/// `{'conflict'}`, `{'wait', ms}` or `{'full', keys}`. `renew` (with `mark` = 'sent', the send
/// mark too) and `settle` answer 1 while the token holds the key: the record is kept alive with
/// its claim, so that a key is never forgotten under its owner.
///
/// `hold` holds an instance's `lock` for the lease, and while a send on it (`sent` or `since`)
/// is within the settle window. `lock` with mode `take` (a free or lapsed lock, or the one of a
/// replaced holder), `renew` or `mark` (the send) answers `{1, age}` while the token holds it,
/// age being how long ago an earlier holder's send with an unknown outcome was marked ('' for
/// none); `{0}` otherwise. `unlock` settles the holder's own send (its caller heard the
/// outcome, unknown or not); a lapsed earlier holder's send stays on the lock for the rest of
/// its settle window unless this holder saw an upgrade accepted.
const STEPS: &str = r"
local function keep(record, index, ms, member)
  redis.call('PEXPIRE', record, ms)
  redis.call('ZADD', index, now + ms, member)
  if redis.call('PTTL', index) < ms then redis.call('PEXPIRE', index, ms) end
end

local function claim(record, index, fp, token, lease, keep_ms, cap, member)
  if redis.call('EXISTS', record) == 0 then
    redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
    local held = redis.call('ZCARD', index)
    if held >= cap then return {'full', tostring(held)} end
    redis.call('HSET', record, 'fp', fp, 'owner', token, 'until', now + lease)
    keep(record, index, keep_ms, member)
    return {'owner', '', ''}
  end
  local f = redis.call('HMGET', record, 'fp', 'owner', 'until', 'sent', 'since', 'answer', 'reconciled')
  if f[1] ~= fp then return {'conflict'} end
  if f[6] then return {'replay', f[6], f[7] or '0'} end
  if f[2] and tonumber(f[3]) > now then return {'wait', tostring(tonumber(f[3]) - now)} end
  local since = f[5]
  if f[2] and f[4] then since = f[4] end
  redis.call('HDEL', record, 'sent')
  if since then redis.call('HSET', record, 'since', since) end
  redis.call('HSET', record, 'owner', token, 'until', now + lease)
  keep(record, index, keep_ms, member)
  local ago = ''
  if since then ago = tostring(math.max(0, now - tonumber(since))) end
  return {'owner', ago, f[2] or ''}
end

local function renew(record, index, token, lease, mark, keep_ms, member)
  if redis.call('HGET', record, 'owner') ~= token then return 0 end
  redis.call('HSET', record, 'until', now + lease)
  if mark == 'sent' then redis.call('HSET', record, 'sent', now) end
  keep(record, index, keep_ms, member)
  return 1
end

local function settle(record, index, token, outcome, answer, reconciled, retention, unresolved, member)
  local f = redis.call('HMGET', record, 'owner', 'sent', 'since')
  if f[1] ~= token then return 0 end
  redis.call('HDEL', record, 'owner', 'until', 'sent')
  if outcome == 'accepted' then
    redis.call('HDEL', record, 'since')
    redis.call('HSET', record, 'answer', answer, 'reconciled', reconciled)
    keep(record, index, retention, member)
    return 1
  end
  local since = f[3]
  if outcome == 'unresolved' and f[2] then since = f[2] end
  if since then
    redis.call('HSET', record, 'since', since)
    keep(record, index, unresolved, member)
  else
    redis.call('DEL', record)
    redis.call('ZREM', index, member)
  end
  return 1
end

local function hold(lock, token, lease, window, sent, since)
  redis.call('HSET', lock, 'owner', token, 'until', now + lease)
  local ms = lease
  local mark = sent or since
  if mark then ms = math.max(ms, tonumber(mark) + window - now) end
  redis.call('PEXPIRE', lock, ms)
end

local function lock(key, token, lease, mode, replaced, window)
  local f = redis.call('HMGET', key, 'owner', 'until', 'sent', 'since')
  local owner, sent, since = f[1], f[3], f[4]
  if owner == token then
    if mode == 'mark' then
      sent = tostring(now)
      redis.call('HSET', key, 'sent', sent)
    end
    hold(key, token, lease, window, sent, since)
    return {1, ''}
  end
  if mode ~= 'take' then return {0} end
  if owner and tonumber(f[2]) > now and owner ~= replaced then return {0} end
  -- Free, or its holder lapsed or was replaced: whatever that holder sent is unresolved now.
  if sent then
    since = sent
    redis.call('HDEL', key, 'sent')
    redis.call('HSET', key, 'since', since)
  end
  hold(key, token, lease, window, nil, since)
  if since then return {1, tostring(math.max(0, now - tonumber(since)))} end
  return {1, ''}
end

local function unlock(key, token, outcome, window)
  local f = redis.call('HMGET', key, 'owner', 'since')
  if f[1] ~= token then return 0 end
  local since = f[2]
  if outcome == 'accepted' then since = nil end
  local left = 0
  if since then left = tonumber(since) + window - now end
  if left <= 0 then
    redis.call('DEL', key)
    return 1
  end
  redis.call('HDEL', key, 'owner', 'until', 'sent')
  redis.call('HSET', key, 'since', since)
  redis.call('PEXPIRE', key, math.ceil(left))
  return 1
end
";

/// KEYS: record, index. ARGV: fingerprint, token, lease ms, keep ms, per-caller cap, member.
const CLAIM: &str = r"
return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
";

/// A claim and, when it makes the token the owner, the instance's lock (taken over from the
/// holder the claim replaced); a busy lock gives the key back as not applied. `{'busy'}`, or the
/// claim's answer, an owner's with the lock's age last.
/// KEYS: record, index, lock. ARGV: as [`CLAIM`], then settle window ms, retention ms,
/// unresolved retention ms.
const CLAIM_LOCK: &str = r"
local c = claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
if c[1] ~= 'owner' then return c end
local l = lock(KEYS[3], ARGV[2], tonumber(ARGV[3]), 'take', c[3], tonumber(ARGV[7]))
if l[1] == 0 then
  settle(KEYS[1], KEYS[2], ARGV[2], 'not_applied', '', '0', tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[6])
  return {'busy'}
end
return {'owner', c[2], c[3], l[2]}
";

/// KEYS: record, index. ARGV: token, lease ms, `sent` to mark the send too, keep ms, member.
const RENEW: &str = r"
return renew(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5])
";

/// With `mark`, the send mark on the lock and then (if it still holds the lock) on the key; with
/// `renew`, both leases. 1 while the token holds both.
/// KEYS: lock, record, index. ARGV: token, lease ms, settle window ms, keep ms, member, `mark` or
/// `renew`.
const MARK: &str = r"
local held = lock(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[6], '', tonumber(ARGV[3]))[1]
if held == 0 and ARGV[6] == 'mark' then return 0 end
local mode = 'renew'
if ARGV[6] == 'mark' then mode = 'sent' end
if renew(KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), mode, tonumber(ARGV[4]), ARGV[5]) == 0 then return 0 end
return held
";

/// KEYS: record, index. ARGV: token, outcome, answer, reconciled, retention ms,
/// unresolved retention ms, member.
const SETTLE: &str = r"
return settle(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
";

/// KEYS: lock. ARGV: token, lease ms, `take`, `renew` or `mark`, the token of a replaced holder
/// ('' for none), settle window ms.
const LOCK: &str = r"
return lock(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5]))
";

/// KEYS: lock. ARGV: token, outcome, settle window ms.
const UNLOCK: &str = r"
return unlock(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
";

/// [`SETTLE`] and then [`UNLOCK`], and with a fourth key the call budget's place given back
/// (`state::quota`: a member of its region's holders; removing a missing one is a no-op).
/// KEYS: record, index, lock, optionally the region's holders. ARGV: as [`SETTLE`], then settle
/// window ms, then the place's holder.
const RELEASE: &str = r"
settle(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
unlock(KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[8]))
if KEYS[4] then redis.call('ZREM', KEYS[4], ARGV[9]) end
return 1
";

/// GCRA (the generic cell rate algorithm): one key per caller holds the theoretical arrival
/// time of its next call, in Redis's clock. KEYS: the caller's key. ARGV: ms between calls at
/// the rate, burst. -1 when the call is taken, else the ms until one would be.
const TAKE_CALL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - (burst - 1) * interval
if now < allowed_at then return math.max(1, math.ceil(allowed_at - now)) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
return -1
";

/// Idempotency keys and upgrade locks in Redis.
pub struct RedisStore {
    connection: ConnectionManager,
    url: String,
    prefix: String,
    limits: StoreLimits,
    claim: Script,
    renew: Script,
    settle: Script,
    lock: Script,
    unlock: Script,
    claim_lock: Script,
    mark: Script,
    release: Script,
    take_call: Script,
    /// The server refused a script on keys of several slots (Redis Cluster, a cluster proxy):
    /// from then on each step is a script of its own.
    single_slot: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A Redis error as the store reports it. Redis's messages name no password; the URL is never
/// part of them.
fn unavailable(err: &redis::RedisError) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// A settlement as the scripts name it.
fn outcome(settlement: &Settlement) -> &'static str {
    match settlement {
        Settlement::Accepted(_) => "accepted",
        Settlement::NotApplied => "not_applied",
        Settlement::Unresolved => "unresolved",
    }
}

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{STEPS}{body}"))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// An age in ms as a script answers it: '' for none; a negative one (the mark came from a clock
/// ahead of Redis's) is 0, so that "maybe sent" never reads as "not sent".
fn age(text: &[u8]) -> Result<Option<Duration>, ()> {
    if text.is_empty() {
        return Ok(None);
    }
    let ms: i64 = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(())?;
    Ok(Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

/// Whether the server refused a script because its keys are in several slots: Redis Cluster
/// answers `CROSSSLOT ... don't hash to the same slot`, Tair's proxy `... keys must in same slot`.
fn cross_slot(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot)
        || err.to_string().to_ascii_lowercase().contains("same slot")
}

/// What the claim scripts answer.
enum Claimed {
    Claim(Claim),
    /// The key (its claim's answer) and the instance's lock, with how long ago an earlier
    /// holder of the lock marked a send with an unknown outcome.
    Held(Claim, Option<Duration>),
    /// The lock is busy; the key was given back.
    Busy,
    /// Another holder has the key for this long yet.
    Wait(Duration),
}

fn claimed(answer: &[Value]) -> Result<Claimed, StoreError> {
    let text = |i: usize| match answer.get(i) {
        Some(Value::BulkString(bytes)) => bytes.as_slice(),
        _ => b"",
    };
    let number = |i: usize| {
        std::str::from_utf8(text(i))
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
    };
    let malformed = || StoreError::Unavailable("unexpected answer from the claim script".into());
    Ok(match text(0) {
        b"owner" => {
            let claim = Claim::Owner {
                unresolved_for: age(text(1)).map_err(|()| malformed())?,
                replaced: std::str::from_utf8(text(2))
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(Token::from_stored),
            };
            match answer.len() {
                4 => Claimed::Held(claim, age(text(3)).map_err(|()| malformed())?),
                _ => Claimed::Claim(claim),
            }
        }
        b"replay" => {
            let response =
                pb::UpgradeEngineVersionResponse::decode(text(1)).map_err(|_| malformed())?;
            Claimed::Claim(Claim::Replay(Accepted {
                response,
                reconciled: text(2) == b"1",
            }))
        }
        b"conflict" => Claimed::Claim(Claim::Conflict),
        b"busy" => Claimed::Busy,
        b"wait" => Claimed::Wait(Duration::from_millis(
            number(1).ok_or_else(malformed)?.unsigned_abs(),
        )),
        b"full" => {
            let keys = number(1).ok_or_else(malformed)?;
            return Err(StoreError::CallerFull(
                usize::try_from(keys).map_err(|_| malformed())?,
            ));
        }
        _ => return Err(malformed()),
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// A store on `url`; connects on first use (and reconnects after a failure).
    /// `ca`, for a `rediss://` URL, holds the CAs the server is verified with, instead of the
    /// system's roots.
    pub fn open(
        url: &RedisUrl,
        ca: Option<&RedisCa>,
        prefix: &str,
        limits: StoreLimits,
    ) -> Result<Self, String> {
        // `rediss://` builds a rustls client with the process's provider.
        crate::tls::install_crypto_provider();
        let client = match ca {
            None => redis::Client::open(url.expose())
                .map_err(|e| format!("state.redis_url: {:?}", e.kind()))?,
            Some(ca) => redis::Client::build_with_tls(
                url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem.clone()),
                },
            )
            .map_err(|e| format!("state.redis_ca_file ({}): {e}", ca.path.display()))?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("state.redis_url: {:?}", e.kind()))?;
        Ok(Self {
            connection,
            url: url.masked(),
            prefix: prefix.to_string(),
            limits,
            claim: script(CLAIM),
            renew: script(RENEW),
            settle: script(SETTLE),
            lock: script(LOCK),
            unlock: script(UNLOCK),
            claim_lock: script(CLAIM_LOCK),
            mark: script(MARK),
            release: script(RELEASE),
            take_call: Script::new(TAKE_CALL),
            single_slot: AtomicBool::new(false),
        })
    }

    /// Logs whether Redis answers, and warns about an eviction policy that could drop a key
    /// (an evicted key can mean a second upgrade).
    pub async fn check_at_start_up(&self) {
        if let Err(err) = self.ping().await {
            tracing::warn!(url = %self.url, error = %err, "the state store (state.redis_url) cannot be reached; upgrades are refused until it can");
            return;
        }
        let mut connection = self.connection.clone();
        let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut connection)
            .await;
        match policy.as_deref() {
            Ok([_, policy]) if policy != "noeviction" => tracing::warn!(
                url = %self.url,
                maxmemory_policy = %policy,
                "the state store's Redis may evict keys under memory pressure; an evicted idempotency key can mean a second upgrade. Use maxmemory-policy noeviction"
            ),
            Ok(_) => {}
            // Managed Redis often refuses CONFIG: nothing to check then.
            Err(err) => {
                tracing::info!(error = %err, "cannot read the state store's maxmemory-policy")
            }
        }
        tracing::info!(url = %self.url, prefix = %self.prefix, "state store: Redis");
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// The shared connection, for the records kept beside this store (the Alibaba quota, fleet
    /// rollouts, recent activity).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// A Redis key of this gateway: the prefix, then the slot's hash tag.
    pub(crate) fn key(&self, tag: &str, rest: &str) -> String {
        format!("{}{{{tag}}}{rest}", self.prefix)
    }

    fn record(&self, key: &Key) -> (String, String) {
        let tag = format!("c:{}", hex(key.caller()));
        (
            self.key(&tag, &format!(":k:{}", key.request_id())),
            self.key(&tag, ":keys"),
        )
    }

    /// How long a claimed record is kept from its claim or its last renewal.
    fn keep(&self) -> Duration {
        self.limits
            .unresolved_retention()
            .max(self.limits.lease)
            .max(self.limits.retention)
    }

    fn lock_key(&self, instance: &str) -> String {
        self.key(&format!("i:{instance}"), ":lock")
    }

    /// Claims `key`, and takes the lock of `instance` with it when one is named, waiting while
    /// another holder has the key. `None`: the server refuses a script on several slots.
    async fn claim_with(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        token: &Token,
        instance: Option<&str>,
    ) -> Result<Option<Claimed>, StoreError> {
        // Another replica's holder does not notify this one: look again, more slowly each time,
        // and at the latest when its lease runs out.
        let backoff = crate::backoff::Backoff::new(Duration::from_millis(20), MAX_POLL);
        let mut looks = 0;
        loop {
            let (record, index) = self.record(key);
            let script = if instance.is_some() {
                &self.claim_lock
            } else {
                &self.claim
            };
            let mut invocation = script.prepare_invoke();
            invocation
                .key(record)
                .key(index)
                .arg(fingerprint.to_hex())
                .arg(token.as_str())
                .arg(millis(self.limits.lease))
                .arg(millis(self.keep()))
                .arg(self.limits.max_keys_per_caller)
                .arg(key.request_id().to_string());
            let answer: Vec<Value> = match instance {
                None => self.invoke(&invocation).await?,
                Some(instance) => {
                    invocation
                        .key(self.lock_key(instance))
                        .arg(millis(self.limits.settle_window))
                        .arg(millis(self.limits.retention))
                        .arg(millis(self.limits.unresolved_retention()));
                    match self.multi_slot(&invocation).await? {
                        Some(answer) => answer,
                        None => return Ok(None),
                    }
                }
            };
            match claimed(&answer)? {
                Claimed::Wait(lease_left) => {
                    looks += 1;
                    tokio::time::sleep(
                        backoff
                            .half_jittered(looks)
                            .min(lease_left.saturating_add(Duration::from_millis(5))),
                    )
                    .await;
                }
                claimed => return Ok(Some(claimed)),
            }
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// Runs a script on keys of several slots, one round trip where several single-slot
    /// scripts would take one each. `None` when the server refuses it (Redis Cluster or a
    /// cluster proxy answer CROSSSLOT before running anything): the store then keeps to
    /// single-slot scripts.
    async fn multi_slot<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Option<T>, StoreError> {
        if self.single_slot.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut connection = self.connection.clone();
        match invocation.invoke_async(&mut connection).await {
            Ok(answer) => Ok(Some(answer)),
            Err(err) if cross_slot(&err) => {
                if !self.single_slot.swap(true, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "the state store refuses scripts on keys of several slots (Redis Cluster or a proxy): one round trip per step from now on");
                }
                Ok(None)
            }
            Err(err) => Err(unavailable(&err)),
        }
    }

    /// The [`MARK`] script in `mode`; `None` when the server refuses scripts on several slots.
    async fn mark_or_renew(
        &self,
        key: &Key,
        instance: &str,
        token: &Token,
        mode: &str,
    ) -> Result<Option<bool>, StoreError> {
        let (record, index) = self.record(key);
        let mut invocation = self.mark.prepare_invoke();
        invocation
            .key(self.lock_key(instance))
            .key(record)
            .key(index)
            .arg(token.as_str())
            .arg(millis(self.limits.lease))
            .arg(millis(self.limits.settle_window))
            .arg(millis(self.keep()))
            .arg(key.request_id().to_string())
            .arg(mode);
        Ok(self
            .multi_slot::<i64>(&invocation)
            .await?
            .map(|held| held == 1))
    }

    async fn lock_script(
        &self,
        instance: &str,
        token: &Token,
        mode: &str,
        replaced: Option<&Token>,
    ) -> Result<InstanceLock, StoreError> {
        let mut connection = self.connection.clone();
        let answer: Vec<Value> = self
            .lock
            .key(self.lock_key(instance))
            .arg(token.as_str())
            .arg(millis(self.limits.lease))
            .arg(mode)
            .arg(replaced.map_or("", Token::as_str))
            .arg(millis(self.limits.settle_window))
            .invoke_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))?;
        let malformed = || StoreError::Unavailable("unexpected answer from the lock script".into());
        match answer.as_slice() {
            [Value::Int(0)] => Ok(InstanceLock::Busy),
            [Value::Int(1), Value::BulkString(ago)] => Ok(InstanceLock::Held {
                unresolved_for: age(ago).map_err(|()| malformed())?,
            }),
            _ => Err(malformed()),
        }
    }

    async fn renew_script(&self, key: &Key, token: &Token, mark: bool) -> Result<bool, StoreError> {
        let (record, index) = self.record(key);
        let mut connection = self.connection.clone();
        let held: i64 = self
            .renew
            .key(record)
            .key(index)
            .arg(token.as_str())
            .arg(millis(self.limits.lease))
            .arg(if mark { "sent" } else { "renew" })
            .arg(millis(self.keep()))
            .arg(key.request_id().to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(held == 1)
    }
}

#[async_trait::async_trait]
impl crate::limits::SharedRates for RedisStore {
    async fn take(
        &self,
        caller: &str,
        rate: crate::limits::Rate,
    ) -> Result<Result<(), Duration>, String> {
        let interval_ms = 1000.0 / rate.per_second;
        let mut connection = self.connection.clone();
        let wait: i64 = self
            .take_call
            .key(self.key(&format!("r:{}", hex(caller)), ""))
            .arg(interval_ms)
            .arg(rate.burst)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match u64::try_from(wait) {
            Ok(ms) => Err(Duration::from_millis(ms)),
            Err(_) => Ok(()),
        })
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        token: &Token,
    ) -> Result<Claim, StoreError> {
        match self.claim_with(key, fingerprint, token, None).await? {
            Some(Claimed::Claim(claim)) => Ok(claim),
            _ => Err(StoreError::Unavailable(
                "unexpected answer from the claim script".into(),
            )),
        }
    }

    async fn mark_sending(&self, key: &Key, token: &Token) -> Result<bool, StoreError> {
        self.renew_script(key, token, true).await
    }

    async fn renew(&self, key: &Key, token: &Token) -> Result<bool, StoreError> {
        self.renew_script(key, token, false).await
    }

    async fn settle(
        &self,
        key: &Key,
        token: &Token,
        settlement: Settlement,
    ) -> Result<(), StoreError> {
        let (record, index) = self.record(key);
        let (answer, reconciled) = answer(&settlement);
        let mut connection = self.connection.clone();
        let _: i64 = self
            .settle
            .key(record)
            .key(index)
            .arg(token.as_str())
            .arg(outcome(&settlement))
            .arg(answer)
            .arg(reconciled)
            .arg(millis(self.limits.retention))
            .arg(millis(self.limits.unresolved_retention()))
            .arg(key.request_id().to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn lock_instance(
        &self,
        instance: &str,
        token: &Token,
        replaced: Option<&Token>,
    ) -> Result<InstanceLock, StoreError> {
        self.lock_script(instance, token, "take", replaced).await
    }

    async fn renew_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError> {
        let held = self.lock_script(instance, token, "renew", None).await?;
        Ok(matches!(held, InstanceLock::Held { .. }))
    }

    async fn mark_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError> {
        let held = self.lock_script(instance, token, "mark", None).await?;
        Ok(matches!(held, InstanceLock::Held { .. }))
    }

    async fn unlock_instance(
        &self,
        instance: &str,
        token: &Token,
        settlement: &Settlement,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .unlock
            .key(self.lock_key(instance))
            .arg(token.as_str())
            .arg(outcome(settlement))
            .arg(millis(self.limits.settle_window))
            .invoke_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.limits.lease)
    }

    async fn claim_and_lock(
        &self,
        key: Option<(&Key, &Fingerprint)>,
        instance: &str,
        token: &Token,
    ) -> Result<Hold, StoreError> {
        let Some((key, fingerprint)) = key else {
            return Ok(match self.lock_instance(instance, token, None).await? {
                InstanceLock::Held { unresolved_for } => Hold::Held {
                    unresolved_for: None,
                    instance_unresolved_for: unresolved_for,
                },
                InstanceLock::Busy => Hold::InstanceBusy,
            });
        };
        let malformed =
            || StoreError::Unavailable("unexpected answer from the claim script".into());
        match self
            .claim_with(key, fingerprint, token, Some(instance))
            .await?
        {
            None => store::claim_then_lock(self, Some((key, fingerprint)), instance, token).await,
            Some(Claimed::Held(Claim::Owner { unresolved_for, .. }, instance_unresolved_for)) => {
                Ok(Hold::Held {
                    unresolved_for,
                    instance_unresolved_for,
                })
            }
            Some(Claimed::Claim(Claim::Replay(accepted))) => Ok(Hold::Replay(accepted)),
            Some(Claimed::Claim(Claim::Conflict)) => Ok(Hold::Conflict),
            Some(Claimed::Busy) => Ok(Hold::InstanceBusy),
            Some(_) => Err(malformed()),
        }
    }

    async fn mark(
        &self,
        key: Option<&Key>,
        instance: &str,
        token: &Token,
    ) -> Result<bool, StoreError> {
        let Some(key) = key else {
            return self.mark_instance(instance, token).await;
        };
        match self.mark_or_renew(key, instance, token, "mark").await? {
            Some(held) => Ok(held),
            None => store::mark_then_mark(self, Some(key), instance, token).await,
        }
    }

    async fn renew_hold(
        &self,
        key: Option<&Key>,
        instance: &str,
        token: &Token,
    ) -> Result<bool, StoreError> {
        let Some(key) = key else {
            return self.renew_instance(instance, token).await;
        };
        match self.mark_or_renew(key, instance, token, "renew").await? {
            Some(held) => Ok(held),
            None => store::renew_then_renew(self, Some(key), instance, token).await,
        }
    }

    async fn release(
        &self,
        key: Option<&Key>,
        instance: Option<&str>,
        token: &Token,
        settlement: &Settlement,
    ) -> Result<(), StoreError> {
        self.release_script(key, instance, token, settlement, None)
            .await
            .map(drop)
    }

    async fn release_with_place(
        &self,
        key: Option<&Key>,
        instance: Option<&str>,
        token: &Token,
        settlement: &Settlement,
        place: store::QuotaPlace<'_>,
    ) -> Result<bool, StoreError> {
        self.release_script(key, instance, token, settlement, Some(place))
            .await
    }
}

impl RedisStore {
    /// The [`RELEASE`] script, with `place` given back in it when named; single-slot steps (the
    /// place untouched, `false`) when there is no key or the server refuses several slots.
    async fn release_script(
        &self,
        key: Option<&Key>,
        instance: Option<&str>,
        token: &Token,
        settlement: &Settlement,
        place: Option<store::QuotaPlace<'_>>,
    ) -> Result<bool, StoreError> {
        let (Some(key), Some(instance)) = (key, instance) else {
            return store::settle_then_unlock(self, key, instance, token, settlement)
                .await
                .map(|()| false);
        };
        let (record, index) = self.record(key);
        let (answer, reconciled) = answer(settlement);
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(record)
            .key(index)
            .key(self.lock_key(instance))
            .arg(token.as_str())
            .arg(outcome(settlement))
            .arg(answer)
            .arg(reconciled)
            .arg(millis(self.limits.retention))
            .arg(millis(self.limits.unresolved_retention()))
            .arg(key.request_id().to_string())
            .arg(millis(self.limits.settle_window));
        if let Some(place) = place {
            invocation
                .key(quota_holders_key(&self.key("quota", ""), place.region))
                .arg(place.holder);
        }
        match self.multi_slot::<i64>(&invocation).await? {
            Some(_) => Ok(place.is_some()),
            None => store::settle_then_unlock(self, Some(key), Some(instance), token, settlement)
                .await
                .map(|()| false),
        }
    }
}

/// What a settlement keeps as the key's answer: the encoded response and whether it was
/// reconciled.
fn answer(settlement: &Settlement) -> (Vec<u8>, &'static str) {
    match settlement {
        Settlement::Accepted(accepted) => (
            accepted.response.encode_to_vec(),
            if accepted.reconciled { "1" } else { "0" },
        ),
        Settlement::NotApplied | Settlement::Unresolved => (Vec::new(), "0"),
    }
}

/// The key of the account budget's holders in `region` (`state::quota`), under the budget's
/// prefix `quota_prefix` (`RedisStore::key("quota", "")`): defined here so that the settle
/// script can give a place back in the same round trip.
pub(crate) fn quota_holders_key(quota_prefix: &str, region: &str) -> String {
    format!("{quota_prefix}:{region}:holders")
}
