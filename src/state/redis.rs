//! The state store on Redis (or Tair), shared by every replica.
//!
//! Each change is one Lua script, so it is atomic, and reads the time from Redis (`TIME`), so
//! the replicas' clocks do not matter. A claim's keys (the key's record and its caller's index)
//! share one hash tag, the caller; an instance's lock is a key of its own. So every script
//! touches one slot, as Redis Cluster and Tair's proxy mode require.
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

use std::time::Duration;

use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::pb;
use crate::state::store::Accepted;
use crate::state::store::{
    Claim, Fingerprint, InstanceLock, Key, Settlement, StateStore, StoreError, StoreLimits, Token,
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

/// Keeps the record `KEYS[1]` for `ms` and notes its expiry in the caller's index `KEYS[2]`.
const KEEP: &str = r"
local function keep(ms, member)
  redis.call('PEXPIRE', KEYS[1], ms)
  redis.call('ZADD', KEYS[2], now + ms, member)
  if redis.call('PTTL', KEYS[2]) < ms then redis.call('PEXPIRE', KEYS[2], ms) end
end
";

/// KEYS: record, index. ARGV: fingerprint, token, lease ms, keep ms, per-caller cap, member.
const CLAIM: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local held = redis.call('ZCARD', KEYS[2])
  if held >= tonumber(ARGV[5]) then return {'full', tostring(held)} end
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'until', now + tonumber(ARGV[3]))
  keep(tonumber(ARGV[4]), ARGV[6])
  return {'owner', ''}
end
local f = redis.call('HMGET', KEYS[1], 'fp', 'owner', 'until', 'sent', 'since', 'answer', 'reconciled')
if f[1] ~= ARGV[1] then return {'conflict'} end
if f[6] then return {'replay', f[6], f[7] or '0'} end
if f[2] and tonumber(f[3]) > now then return {'wait', tostring(tonumber(f[3]) - now)} end
local since = f[5]
if f[2] and f[4] then since = f[4] end
redis.call('HDEL', KEYS[1], 'sent')
if since then redis.call('HSET', KEYS[1], 'since', since) end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'until', now + tonumber(ARGV[3]))
keep(tonumber(ARGV[4]), ARGV[6])
local ago = ''
if since then ago = tostring(math.max(0, now - tonumber(since))) end
return {'owner', ago, f[2] or ''}
";

/// KEYS: record, index. ARGV: token, lease ms, `sent` to mark the send too, keep ms, member.
/// 1 while the token holds it. The record is kept alive with its claim, so that a key is never
/// forgotten under its owner.
const RENEW: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'until', now + tonumber(ARGV[2]))
if ARGV[3] == 'sent' then redis.call('HSET', KEYS[1], 'sent', now) end
keep(tonumber(ARGV[4]), ARGV[5])
return 1
";

/// KEYS: record, index. ARGV: token, outcome, answer, reconciled, retention ms,
/// unresolved retention ms, member.
const SETTLE: &str = r"
local f = redis.call('HMGET', KEYS[1], 'owner', 'sent', 'since')
if f[1] ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'owner', 'until', 'sent')
if ARGV[2] == 'accepted' then
  redis.call('HDEL', KEYS[1], 'since')
  redis.call('HSET', KEYS[1], 'answer', ARGV[3], 'reconciled', ARGV[4])
  keep(tonumber(ARGV[5]), ARGV[7])
  return 1
end
local since = f[3]
if ARGV[2] == 'unresolved' and f[2] then since = f[2] end
if since then
  redis.call('HSET', KEYS[1], 'since', since)
  keep(tonumber(ARGV[6]), ARGV[7])
else
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[7])
end
return 1
";

/// Holds the lock `KEYS[1]` for `ARGV[1]` for the lease `ARGV[2]`, and while a send on it
/// (`sent` or `since`) is within the settle window `ARGV[5]`.
const HOLD: &str = r"
local function hold(sent, since)
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', now + tonumber(ARGV[2]))
  local ms = tonumber(ARGV[2])
  local mark = sent or since
  if mark then ms = math.max(ms, tonumber(mark) + tonumber(ARGV[5]) - now) end
  redis.call('PEXPIRE', KEYS[1], ms)
end
";

/// KEYS: lock. ARGV: token, lease ms, `take` (a free or lapsed lock), `renew` or `mark` (the
/// send), the token of a replaced holder (whose lock is taken over), settle window ms.
/// `{1, age}` while the token holds it, age being how long ago an earlier holder's send with an
/// unknown outcome was marked ('' for none); `{0}` otherwise.
const LOCK: &str = r"
local f = redis.call('HMGET', KEYS[1], 'owner', 'until', 'sent', 'since')
local owner, sent, since = f[1], f[3], f[4]
if owner == ARGV[1] then
  if ARGV[3] == 'mark' then
    sent = tostring(now)
    redis.call('HSET', KEYS[1], 'sent', sent)
  end
  hold(sent, since)
  return {1, ''}
end
if ARGV[3] ~= 'take' then return {0} end
if owner and tonumber(f[2]) > now and owner ~= ARGV[4] then return {0} end
-- Free, or its holder lapsed or was replaced: whatever that holder sent is unresolved now.
if sent then
  since = sent
  redis.call('HDEL', KEYS[1], 'sent')
  redis.call('HSET', KEYS[1], 'since', since)
end
hold(nil, since)
if since then return {1, tostring(math.max(0, now - tonumber(since)))} end
return {1, ''}
";

/// KEYS: lock. ARGV: token, outcome, settle window ms. The holder's own send is settled (its
/// caller heard the outcome, unknown or not); a lapsed earlier holder's send stays on the lock for
/// the rest of its settle window unless this holder saw an upgrade accepted.
const UNLOCK: &str = r"
local f = redis.call('HMGET', KEYS[1], 'owner', 'since')
if f[1] ~= ARGV[1] then return 0 end
local since = f[2]
if ARGV[2] == 'accepted' then since = nil end
local left = 0
if since then left = tonumber(since) + tonumber(ARGV[3]) - now end
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('HDEL', KEYS[1], 'owner', 'until', 'sent')
redis.call('HSET', KEYS[1], 'since', since)
redis.call('PEXPIRE', KEYS[1], math.ceil(left))
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
    take_call: Script,
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
    Script::new(&format!("{NOW}{KEEP}{body}"))
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
            lock: Script::new(&format!("{NOW}{HOLD}{LOCK}")),
            unlock: script(UNLOCK),
            take_call: Script::new(TAKE_CALL),
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

    /// The connection, for the stores kept beside this one (the Alibaba quota).
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

    async fn try_claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        token: &Token,
    ) -> Result<Result<Claim, Duration>, StoreError> {
        let (record, index) = self.record(key);
        let keep = self.keep();
        let mut connection = self.connection.clone();
        let answer: Vec<Value> = self
            .claim
            .key(record)
            .key(index)
            .arg(fingerprint.to_hex())
            .arg(token.as_str())
            .arg(millis(self.limits.lease))
            .arg(millis(keep))
            .arg(self.limits.max_keys_per_caller)
            .arg(key.request_id().to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))?;
        let text = |i: usize| match answer.get(i) {
            Some(Value::BulkString(bytes)) => bytes.as_slice(),
            _ => b"",
        };
        let number = |i: usize| {
            std::str::from_utf8(text(i))
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
        };
        let malformed =
            || StoreError::Unavailable("unexpected answer from the claim script".into());
        Ok(match text(0) {
            b"owner" => Ok(Claim::Owner {
                unresolved_for: age(text(1)).map_err(|()| malformed())?,
                replaced: std::str::from_utf8(text(2))
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(Token::from_stored),
            }),
            b"replay" => {
                let response =
                    pb::UpgradeEngineVersionResponse::decode(text(1)).map_err(|_| malformed())?;
                Ok(Claim::Replay(Accepted {
                    response,
                    reconciled: text(2) == b"1",
                }))
            }
            b"conflict" => Ok(Claim::Conflict),
            b"wait" => Err(Duration::from_millis(
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
        // Another replica's holder does not notify this one: look again, more slowly each time,
        // and at the latest when its lease runs out.
        let backoff = crate::backoff::Backoff::new(Duration::from_millis(20), MAX_POLL);
        let mut looks = 0;
        loop {
            match self.try_claim(key, fingerprint, token).await? {
                Ok(claim) => return Ok(claim),
                Err(lease_left) => {
                    looks += 1;
                    tokio::time::sleep(
                        backoff
                            .half_jittered(looks)
                            .min(lease_left.saturating_add(Duration::from_millis(5))),
                    )
                    .await;
                }
            }
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
        let (answer, reconciled) = match &settlement {
            Settlement::Accepted(accepted) => (
                accepted.response.encode_to_vec(),
                if accepted.reconciled { "1" } else { "0" },
            ),
            Settlement::NotApplied | Settlement::Unresolved => (Vec::new(), "0"),
        };
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
}
