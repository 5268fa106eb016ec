//! RabbitMQ: the durable command queue. Publishing carries concurrent requests' commands in group
//! commits over a few confirm-mode channels (a publish waits for the confirm of the envelope that
//! carries it); consuming uses manual acknowledgements with a prefetch window.

use chatsys_core::telemetry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::sync::Mutex;

use chatsys_core::command::Command;
use chatsys_core::domain::AppId;
use chatsys_core::envelope;
use chatsys_core::error::{Backend, CoreError, CoreResult};
use chatsys_core::group_commit::{Flush, GroupCommit, GroupLimits};
use chatsys_core::ports::{BatchLimits, CommandSource, Delivery, Queue};

fn unavailable(e: impl std::fmt::Display) -> CoreError {
    CoreError::unavailable(Backend::Queue, e)
}

/// A command queue as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    pub name: String,
    pub messages: u64,
    pub consumers: u32,
}

/// A queue's state, read with a passive declare on a channel of its own (a declare of a queue that does
/// not exist closes its channel): `None` when the queue does not exist.
async fn queue_state(connection: &Connection, name: &str) -> CoreResult<Option<QueueState>> {
    let channel = connection.create_channel().await.map_err(unavailable)?;
    let declared = channel
        .queue_declare(
            ShortString::from(name.to_string()),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::durable()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(queue) => {
            let _ = channel.close(200, ShortString::from("done")).await;
            Ok(Some(QueueState {
                name: name.to_string(),
                messages: u64::from(queue.message_count()),
                consumers: queue.consumer_count(),
            }))
        }
        Err(e) if protocol_error(&e, 404) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Whether the broker refused an operation with this AMQP reply code.
fn protocol_error(e: &lapin::Error, code: u16) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(error) if error.get_id() == code)
}

/// The queues named `name(0)`, `name(1)` … that exist, up to the first missing one: both kinds of
/// command queue have no holes (each process declares its queues from the first up, and the workers
/// delete classic queues from the last down).
async fn existing(
    connection: &Connection,
    name: impl Fn(usize) -> String,
) -> CoreResult<Vec<QueueState>> {
    let mut found = Vec::new();
    for shard in 0..usize::from(chatsys_settings::MAX_QUEUE_SHARDS) {
        match queue_state(connection, &name(shard)).await? {
            Some(queue) => found.push(queue),
            None => break,
        }
    }
    Ok(found)
}

/// Every command queue that exists, whichever process declared it. This, not any one process's
/// setting, is how many queues hold commands.
async fn existing_queues(
    connection: &Connection,
    queues: &CommandQueues,
) -> CoreResult<Vec<QueueState>> {
    existing(connection, |shard| queues.name(shard)).await
}

/// The classic command queues of an earlier release that still exist (see [`CommandQueues`]).
async fn existing_classic_queues(
    connection: &Connection,
    queues: &CommandQueues,
) -> CoreResult<Vec<QueueState>> {
    existing(connection, |shard| queues.classic_name(shard)).await
}

/// Why the workers leave commands stranded, if they do: a command queue nobody consumes while another
/// has consumers (workers run, but consume fewer queues than exist), or a classic queue of an earlier
/// release that holds commands nobody consumes. An empty classic queue without consumers strands
/// nothing: the workers stop consuming a drained one that they could not delete yet. No consumer
/// anywhere is workers being down, which the queue rides out.
pub fn stranding(queues: &[QueueState], classic: &[QueueState]) -> Option<String> {
    let consumed = queues.iter().chain(classic).find(|q| q.consumers > 0)?;
    let stranded = queues
        .iter()
        .find(|q| q.consumers == 0)
        .or_else(|| classic.iter().find(|q| q.consumers == 0 && q.messages > 0))?;
    Some(format!(
        "command queue {} has no consumer while {} has {}: the workers consume fewer queues than exist",
        stranded.name, consumed.name, consumed.consumers
    ))
}

/// The queues commands are spread over, quorum queues (replicated over a cluster's nodes). A RabbitMQ
/// queue is one Erlang process, so one queue has a ceiling of its own (BENCHMARKS.md, "capacity
/// model"); with `shards` above 1 the commands go to `<base>.quorum`, `<base>.quorum.1` …
/// `<base>.quorum.<shards - 1>`. Every worker consumes every command queue that exists, whatever its
/// own setting says (see [`existing_queues`]), so an API replica with more queues than a worker, or a
/// number lowered later, strands nothing. Refused commands of every shard go to the one dead-letter
/// queue `<base>.quorum.dead`.
///
/// Earlier releases used classic queues named `<base>`, `<base>.1` … and `<base>.dead`: a queue's type
/// cannot change, so the quorum queues have names of their own, and the workers also consume the
/// classic command queues that still exist until they are drained, then delete them (see
/// [`AmqpSource`]). The classic dead-letter queue is left to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandQueues {
    base: String,
    shards: usize,
}

impl CommandQueues {
    pub fn new(base: &str, shards: usize) -> Self {
        CommandQueues {
            base: base.to_string(),
            shards: shards.max(1),
        }
    }

    pub fn count(&self) -> usize {
        self.shards
    }

    /// The name of queue `shard` (0 is the first).
    pub fn name(&self, shard: usize) -> String {
        chatsys_settings::command_queue_name(&self.base, shard)
    }

    pub fn names(&self) -> Vec<String> {
        (0..self.shards).map(|shard| self.name(shard)).collect()
    }

    pub fn dead_letters(&self) -> String {
        chatsys_settings::dead_letter_queue_name(&self.base)
    }

    /// The name of an earlier release's classic queue `shard`.
    pub fn classic_name(&self, shard: usize) -> String {
        chatsys_settings::classic_command_queue_name(&self.base, shard)
    }

    /// An earlier release's classic dead-letter queue.
    pub fn classic_dead_letters(&self) -> String {
        chatsys_settings::classic_dead_letter_queue_name(&self.base)
    }

    /// The queue of a command: its chat's, so that a chat's commands meet in the same batches (their
    /// count updates merge) while a busy application's chats spread over every queue. Commands are
    /// idempotent and order-free, so any queue would be correct; this one is also the same in every
    /// API replica.
    pub fn of(&self, command: &Command) -> usize {
        let (application, chat) = command.chat_key().unwrap_or((command.application_id(), 0));
        let mixed = (application.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ chat)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((mixed >> 32) % self.shards as u64) as usize
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed connection, requests fail at once for this long instead of each waiting to connect.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

async fn connect(url: &str, name: &str) -> CoreResult<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_string()));
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| unavailable("timed out connecting to RabbitMQ"))?
        .map_err(unavailable)
}

/// How many times a command may go back to its queue unacknowledged (the channel it was delivered on
/// closed: a worker that crashed, a broker restart) before RabbitMQ moves it to the dead-letter queue,
/// so that a command that kills every worker it reaches stops there instead of crashing them forever.
/// 20 is RabbitMQ 4's default for quorum queues: each crash or restart counts once against every
/// delivery in flight, a whole prefetch window, so a small limit would also dead-letter the good
/// commands that shared a few windows with a poison one. A constant, not the worker's `max_attempts`
/// (tries at a refused command within one delivery, and each worker's own setting): every process
/// declares the queues, and a declare whose arguments differ from the queue's fails.
pub const DELIVERY_LIMIT: i32 = 20;

/// The arguments of a command queue: a quorum queue (RabbitMQ 3.10 or later) whose commands delivered
/// more than [`DELIVERY_LIMIT`] times go to `dead_letters` through the default exchange. At-least-once
/// dead-lettering, so that the move survives a broker restart or a missing majority: RabbitMQ
/// falls back to at-most-once unless the overflow is `reject-publish` ("dlh" in rabbit_quorum_queue.erl;
/// https://www.rabbitmq.com/blog/2022/03/29/at-least-once-dead-lettering). With no length limit set, no
/// publish is ever refused for overflow.
fn command_queue_arguments(dead_letters: &str) -> FieldTable {
    let mut arguments = quorum_arguments();
    for (name, value) in [
        ("x-delivery-limit", AMQPValue::LongInt(DELIVERY_LIMIT)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(dead_letters)),
        ("x-dead-letter-strategy", text("at-least-once")),
        ("x-overflow", text("reject-publish")),
    ] {
        arguments.insert(ShortString::from(name), value);
    }
    arguments
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-queue-type"), text("quorum"));
    arguments
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.to_string()))
}

/// Declares the command queues and their dead-letter queue, all quorum queues (idempotent). The
/// dead-letter queue first: commands dead-lettered at least once wait for their target to exist.
pub async fn declare(channel: &Channel, queues: &CommandQueues) -> CoreResult<()> {
    let dead_letters = queues.dead_letters();
    let declarations = std::iter::once((dead_letters.clone(), quorum_arguments())).chain(
        queues
            .names()
            .into_iter()
            .map(|name| (name, command_queue_arguments(&dead_letters))),
    );
    for (name, arguments) in declarations {
        channel
            .queue_declare(
                ShortString::from(name),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// The properties of a message of `commands` commands: one is a command as it always was, more are an
/// envelope (see [`envelope`]); the header says how many, for whoever reads the queue by hand.
fn persistent(commands: usize) -> BasicProperties {
    let (content_type, count) = if commands == 1 {
        // A JSON header line, then the body's bytes (see `Command::encode`).
        ("application/vnd.chatsys.command", None)
    } else {
        ("application/vnd.chatsys.envelope.v1", Some(commands))
    };
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from(content_type));
    match count {
        Some(count) => {
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from(COMMANDS_HEADER),
                AMQPValue::LongString(LongString::from(count.to_string())),
            );
            properties.with_headers(headers)
        }
        None => properties,
    }
}

/// The header of an envelope that says how many commands it holds.
const COMMANDS_HEADER: &str = "x-chatsys-commands";

/// Publishes with mandatory routing and waits for the broker's confirm: only then is the command durable.
async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> CoreResult<()> {
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue.to_string()),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            properties,
        )
        .await
        .map_err(unavailable)?;
    match confirm.await.map_err(unavailable)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(unavailable("the command queue does not exist")),
        Confirmation::Nack(_) => Err(unavailable("RabbitMQ refused the command")),
        Confirmation::NotRequested => Err(unavailable("publisher confirms are off")),
    }
}

struct Link {
    connection: Connection,
    channels: Vec<Channel>,
}

enum LinkState {
    Up(std::sync::Arc<Link>),
    Down { since: Instant, reason: String },
}

/// The publishing connection and its confirm-mode channels, reconnected when they break.
struct Broker {
    url: String,
    queues: CommandQueues,
    channel_count: usize,
    link: Mutex<LinkState>,
}

impl Broker {
    async fn open(&self) -> CoreResult<Link> {
        let connection = connect(&self.url, "chatsys-api").await?;
        let mut channels = Vec::with_capacity(self.channel_count);
        for _ in 0..self.channel_count {
            let channel = connection.create_channel().await.map_err(unavailable)?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            channels.push(channel);
        }
        declare(&channels[0], &self.queues).await?;
        Ok(Link {
            connection,
            channels,
        })
    }

    /// The live link, reconnecting when it broke (at most one attempt per pause).
    async fn link(&self) -> CoreResult<std::sync::Arc<Link>> {
        let mut state = self.link.lock().await;
        if let LinkState::Up(link) = &*state {
            if link.connection.status().connected()
                && link.channels.iter().all(|c| c.status().connected())
            {
                return Ok(link.clone());
            }
            *state = LinkState::Down {
                since: Instant::now() - RECONNECT_PAUSE,
                reason: "connection lost".into(),
            };
        }
        if let LinkState::Down { since, reason } = &*state
            && since.elapsed() < RECONNECT_PAUSE
        {
            return Err(unavailable(reason));
        }
        match self.open().await {
            Ok(link) => {
                let link = std::sync::Arc::new(link);
                *state = LinkState::Up(link.clone());
                Ok(link)
            }
            Err(e) => {
                *state = LinkState::Down {
                    since: Instant::now(),
                    reason: e.to_string(),
                };
                Err(e)
            }
        }
    }
}

/// Publishes the commands waiting for one queue as one envelope on the lane's own channel, and
/// answers each of them with the broker's confirm of it.
struct EnvelopePublisher {
    broker: std::sync::Arc<Broker>,
    queue: usize,
    /// The channels of this queue's lanes start here.
    first_channel: usize,
    timeout: Duration,
}

#[async_trait]
impl Flush for EnvelopePublisher {
    type Item = Vec<u8>;
    type Output = Result<(), String>;

    async fn flush(&self, lane: usize, commands: Vec<Vec<u8>>) -> Vec<Self::Output> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let link = self.broker.link().await?;
            let channel = &link.channels[(self.first_channel + lane) % link.channels.len()];
            publish_confirmed(
                channel,
                &self.broker.queues.name(self.queue),
                &envelope::seal(&commands),
                persistent(commands.len()),
            )
            .await
        })
        .await
        .unwrap_or_else(|_| Err(unavailable("RabbitMQ did not confirm in time")));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!(telemetry::QUEUE_PUBLISH.name, "result" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(telemetry::QUEUE_ENVELOPE_COMMANDS.name).record(commands.len() as f64);
        let result = result.map_err(|e| e.to_string());
        vec![result; commands.len()]
    }
}

/// Publishing side of the command queues. Concurrent publishes are carried in group commits, per
/// queue: the commands waiting for a queue while its envelopes in flight await their confirms go out
/// together as the next envelope (see [`envelope`]), and each publish returns once the broker
/// confirmed the envelope that carries it.
pub struct AmqpQueue {
    broker: std::sync::Arc<Broker>,
    /// One group commit per command queue.
    publishing: Vec<GroupCommit<EnvelopePublisher>>,
}

impl AmqpQueue {
    /// `in_flight` envelopes at most awaiting their confirms per queue, each on a channel of its own;
    /// must be called within a Tokio runtime.
    pub fn new(
        url: &str,
        queues: CommandQueues,
        in_flight: usize,
        publish_timeout: Duration,
    ) -> Self {
        let in_flight = in_flight.max(1);
        let broker = std::sync::Arc::new(Broker {
            url: url.to_string(),
            queues: queues.clone(),
            channel_count: in_flight * queues.count(),
            link: Mutex::new(LinkState::Down {
                since: Instant::now() - RECONNECT_PAUSE,
                reason: "not connected".into(),
            }),
        });
        let limits = GroupLimits {
            count: envelope::MAX_COMMANDS,
            bytes: envelope::PARTS_BYTES,
            lanes: in_flight,
        };
        let publishing = (0..queues.count())
            .map(|queue| {
                let publisher = EnvelopePublisher {
                    broker: broker.clone(),
                    queue,
                    first_channel: queue * in_flight,
                    timeout: publish_timeout,
                };
                GroupCommit::start(publisher, limits)
            })
            .collect();
        AmqpQueue { publishing, broker }
    }
}

#[async_trait]
impl Queue for AmqpQueue {
    /// Connected, and no command queue is left without a consumer while another has one.
    async fn ping(&self) -> CoreResult<()> {
        let link = self.broker.link().await?;
        let queues = &self.broker.queues;
        let current = existing_queues(&link.connection, queues).await?;
        let classic = existing_classic_queues(&link.connection, queues).await?;
        match stranding(&current, &classic) {
            Some(reason) => Err(unavailable(reason)),
            None => Ok(()),
        }
    }

    async fn publish(&self, command: &Command) -> CoreResult<()> {
        let encoded = command.encode();
        let size = encoded.len() + envelope::PART_OVERHEAD;
        let queue = self.broker.queues.of(command);
        match self.publishing[queue].submit(size, encoded).await {
            Some(result) => result.map_err(unavailable),
            None => Err(unavailable("the publisher stopped")),
        }
    }

    /// Messages waiting in every command queue that exists, this process's or not, and in the classic
    /// queues of an earlier release not yet drained.
    async fn backlog(&self) -> CoreResult<u64> {
        let link = self.broker.link().await?;
        let queues = &self.broker.queues;
        let current = existing_queues(&link.connection, queues).await?;
        let classic = existing_classic_queues(&link.connection, queues).await?;
        Ok(current
            .iter()
            .chain(&classic)
            .map(|queue| queue.messages)
            .sum())
    }

    /// Each waiting message counted as a full envelope.
    async fn queued_commands_at_most(&self) -> CoreResult<u64> {
        Ok(self.backlog().await? * envelope::MAX_COMMANDS as u64)
    }
}

impl AmqpQueue {
    /// Commands refused for good, waiting in the dead-letter queue, and in an earlier release's classic
    /// one while it exists (nobody but an operator empties it).
    pub async fn dead_letters(&self) -> CoreResult<u64> {
        let link = self.broker.link().await?;
        let queues = &self.broker.queues;
        let mut waiting = 0;
        for name in [queues.dead_letters(), queues.classic_dead_letters()] {
            let queue = queue_state(&link.connection, &name).await?;
            waiting += queue.map_or(0, |queue| queue.messages);
        }
        Ok(waiting)
    }
}

/// The consuming side of the command queues, reconnecting after a broker restart: one channel and one
/// consumer per queue, since a delivery tag, and so an acknowledgement of all tags up to one, is the
/// channel's. It also drains the classic queues of an earlier release (see
/// [`SourceLink::drain_classic`]).
pub struct AmqpSource {
    url: String,
    queues: CommandQueues,
    prefetch: u16,
    link: Option<SourceLink>,
    /// Counts connections; a delivery tag only means something on the connection that gave it.
    connection: u64,
    /// Deliveries taken from the consumer but not yet returned: `next_batch` may be cancelled while
    /// it waits for more, and must not lose what it already took.
    pending: Vec<Pending>,
    deadline: Option<tokio::time::Instant>,
    /// When to look next for a command queue this source does not consume (declared since it connected)
    /// and at the classic queues.
    next_look: tokio::time::Instant,
}

/// How often a worker looks for command queues declared since it connected (an API replica with more
/// queues than the worker's setting), and at the classic queues of an earlier release: at most this
/// long, their commands wait.
const LOOK_FOR_QUEUES_EVERY: Duration = Duration::from_secs(5);

struct SourceLink {
    connection: Connection,
    /// The command queues consumed: at least the setting's, and every one that existed when connecting.
    consumed: CommandQueues,
    /// A delivery's `lane` is its index here: the command queues', in their order, then one for each
    /// time this link started consuming a classic queue.
    lanes: Vec<Consumed>,
    consumers: SelectAll<Lane>,
    /// Each lane's share of the prefetch window.
    prefetch: u16,
}

/// One queue consumed on a channel of its own.
struct Consumed {
    queue: String,
    channel: Channel,
    /// What was settled on the channel.
    acks: LaneAcks,
    /// The last tag delivered on the channel: every delivery is settled once `acks` went through it.
    delivered: u64,
    /// Set when the channel is closed on purpose (a drained classic queue): what its consumer still
    /// holds went back to the queue, and the lane's stream ends.
    closed: Arc<AtomicBool>,
}

/// One queue's consumer, its deliveries tagged with its lane.
struct Lane {
    index: usize,
    consumer: Consumer,
    closed: Arc<AtomicBool>,
}

impl futures::Stream for Lane {
    type Item = (usize, lapin::Result<lapin::message::Delivery>);

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.closed.load(Ordering::Relaxed) {
            return std::task::Poll::Ready(None);
        }
        let index = self.index;
        self.consumer
            .poll_next_unpin(cx)
            .map(|delivery| delivery.map(|delivery| (index, delivery)))
    }
}

impl SourceLink {
    /// Consumes `queue` on a new channel, as a new lane.
    async fn consume(&mut self, queue: String) -> CoreResult<()> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.clone()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let closed = Arc::new(AtomicBool::new(false));
        self.consumers.push(Lane {
            index: self.lanes.len(),
            consumer,
            closed: closed.clone(),
        });
        self.lanes.push(Consumed {
            queue,
            channel,
            acks: LaneAcks::default(),
            delivered: 0,
            closed,
        });
        Ok(())
    }

    fn consuming(&self, queue: &str) -> impl Iterator<Item = &Consumed> {
        self.lanes
            .iter()
            .filter(move |lane| lane.queue == queue && !lane.closed.load(Ordering::Relaxed))
    }

    /// Whether every delivery of `queue` to this link is settled.
    fn settled(&self, queue: &str) -> bool {
        self.consuming(queue)
            .all(|lane| lane.acks.through >= lane.delivered)
    }

    /// Closes the channels that consume `queue`: the broker takes back whatever they hold unsettled.
    async fn stop_consuming(&self, queue: &str) {
        for lane in self.consuming(queue) {
            lane.closed.store(true, Ordering::Relaxed);
            let _ = lane.channel.close(200, ShortString::from("drained")).await;
        }
    }

    /// Drains the classic queues of an earlier release. Each is deleted once drained, from the last one
    /// down so that they keep no holes: when it has no command ready and every delivery of it to this
    /// link is settled, its consumer goes (its channel closed: a delivery that crossed the close goes
    /// back to the queue), then the queue is deleted if it is still empty and nobody consumes it. Both
    /// conditions matter, since a delete discards the deliveries its consumers hold unacknowledged.
    /// A queue another worker still consumes is left to that one; a queue not consumed here that
    /// holds commands (an API of the earlier release still publishing, a delete that found one
    /// come back) is consumed again.
    async fn drain_classic(&mut self, queues: &CommandQueues) -> CoreResult<()> {
        let mut classic = existing_classic_queues(&self.connection, queues).await?;
        while let Some(last) = classic.last() {
            if last.messages > 0 || !self.settled(&last.name) {
                break;
            }
            self.stop_consuming(&last.name).await;
            if !delete_drained(&self.connection, &last.name).await? {
                break;
            }
            classic.pop();
        }
        for queue in classic {
            if self.consuming(&queue.name).next().is_some() {
                continue;
            }
            // Read again: a delete that failed may have found commands the read before it did not.
            let waiting = queue_state(&self.connection, &queue.name).await?;
            if waiting.is_some_and(|queue| queue.messages > 0) {
                tracing::info!(
                    queue = queue.name,
                    "consuming a classic command queue again"
                );
                self.consume(queue.name).await?;
            }
        }
        Ok(())
    }
}

/// Deletes a drained classic queue unless it has a message ready or a consumer: `false` when it had (the
/// broker's 406, which closes the channel, hence one of its own).
async fn delete_drained(connection: &Connection, queue: &str) -> CoreResult<bool> {
    let channel = connection.create_channel().await.map_err(unavailable)?;
    let options = QueueDeleteOptions {
        if_unused: true,
        if_empty: true,
        ..QueueDeleteOptions::default()
    };
    match channel
        .queue_delete(ShortString::from(queue.to_string()), options)
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, ShortString::from("done")).await;
            tracing::info!(queue, "deleted a drained classic command queue");
            Ok(true)
        }
        Err(e) if protocol_error(&e, 406) => Ok(false),
        Err(e) => Err(unavailable(e)),
    }
}

impl AmqpSource {
    /// `prefetch` is the worker's window over all the queues, shared among them.
    pub fn new(url: &str, queues: CommandQueues, prefetch: u16) -> Self {
        AmqpSource {
            url: url.to_string(),
            queues,
            prefetch,
            link: None,
            connection: 0,
            pending: Vec::new(),
            deadline: None,
            next_look: tokio::time::Instant::now() + LOOK_FOR_QUEUES_EVERY,
        }
    }

    async fn open(&self) -> CoreResult<SourceLink> {
        // Named after its queues, so that the broker's connection list tells one system's worker apart.
        let name = format!("chatsys-worker {}", self.queues.name(0));
        let connection = connect(&self.url, &name).await?;
        let declaring = connection.create_channel().await.map_err(unavailable)?;
        declare(&declaring, &self.queues).await?;
        let _ = declaring.close(200, ShortString::from("done")).await;
        let existing = existing_queues(&connection, &self.queues).await?.len();
        let consumed = CommandQueues::new(&self.queues.base, existing.max(self.queues.count()));
        let classic = existing_classic_queues(&connection, &self.queues).await?;
        let lanes = (consumed.count() + classic.len()) as u16;
        let mut link = SourceLink {
            connection,
            consumed: consumed.clone(),
            lanes: Vec::new(),
            consumers: SelectAll::new(),
            prefetch: self.prefetch.div_ceil(lanes).max(1),
        };
        for queue in consumed.names() {
            link.consume(queue).await?;
        }
        for queue in classic {
            link.consume(queue.name).await?;
        }
        Ok(link)
    }

    /// Every few seconds: whether a command queue exists past those consumed (its commands would wait
    /// for nobody), and the classic queues' drain.
    async fn look_after_queues(&mut self) -> CoreResult<Option<String>> {
        let Some(link) = &mut self.link else {
            return Ok(None);
        };
        let next = link.consumed.name(link.consumed.count());
        if let Some(queue) = queue_state(&link.connection, &next).await? {
            return Ok(Some(queue.name));
        }
        link.drain_classic(&self.queues).await?;
        Ok(None)
    }

    /// Forgets the connection; everything it delivered and nobody acknowledged comes back from the broker.
    fn broken(&mut self, e: impl std::fmt::Display) -> CoreError {
        self.link = None;
        self.pending.clear();
        self.deadline = None;
        unavailable(e)
    }

    fn delivery(&mut self, lane: usize, d: lapin::message::Delivery) -> Pending {
        if let Some(link) = &mut self.link {
            let consumed = &mut link.lanes[lane];
            consumed.delivered = consumed.delivered.max(d.delivery_tag);
        }
        let headers = d
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(name, value)| match value {
                        AMQPValue::LongString(text) => Some((name.to_string(), text.to_string())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Pending {
            application: envelope::application_of(&d.data),
            commands: envelope::commands_in(&d.data),
            delivery: Delivery {
                tag: d.delivery_tag,
                connection: self.connection,
                lane,
                payload: d.data,
                redelivered: d.redelivered,
                headers,
            },
        }
    }
}

/// A delivery taken from the consumer, with its (first) command's application and how many commands
/// it holds (read once, to choose batches).
struct Pending {
    application: Option<AppId>,
    commands: usize,
    delivery: Delivery,
}

#[async_trait]
impl CommandSource for AmqpSource {
    async fn next_batch(&mut self, limits: &BatchLimits) -> CoreResult<Vec<Delivery>> {
        if self.link.is_none() {
            self.link = Some(self.open().await?);
            self.connection += 1;
            // Connected: said at once, so the worker's readiness follows its connection, not the next
            // command (an idle system would otherwise look down after every broker blip).
            return Ok(Vec::new());
        }
        if self.pending.is_empty() {
            let next = loop {
                if tokio::time::Instant::now() >= self.next_look {
                    self.next_look = tokio::time::Instant::now() + LOOK_FOR_QUEUES_EVERY;
                    let looked = self.look_after_queues().await;
                    if let Some(queue) = looked.map_err(|e| self.broken(e))? {
                        // Said through the worker's readiness while it reconnects to consume them all.
                        return Err(self.broken(format!(
                            "command queue {queue} exists but was not consumed; reconnecting to consume every command queue"
                        )));
                    }
                }
                let link = self.link.as_mut().expect("connected");
                tokio::select! {
                    next = link.consumers.next() => break next,
                    () = tokio::time::sleep_until(self.next_look) => {}
                }
            };
            match next {
                Some((lane, Ok(d))) => {
                    let d = self.delivery(lane, d);
                    self.pending.push(d);
                    self.deadline = Some(tokio::time::Instant::now() + limits.wait);
                }
                Some((_, Err(e))) => return Err(self.broken(e)),
                None => return Err(self.broken("the broker cancelled the consumer")),
            }
        }
        let deadline = self.deadline.unwrap_or_else(tokio::time::Instant::now);
        let mut bytes: usize = self.pending.iter().map(|p| p.delivery.payload.len()).sum();
        let mut commands: usize = self.pending.iter().map(|p| p.commands).sum();
        while commands < limits.commands && bytes <= limits.bytes {
            let next = tokio::time::timeout_at(
                deadline,
                self.link.as_mut().expect("connected").consumers.next(),
            )
            .await;
            match next {
                Ok(Some((lane, Ok(d)))) => {
                    let d = self.delivery(lane, d);
                    bytes += d.delivery.payload.len();
                    commands += d.commands;
                    self.pending.push(d);
                }
                // A broken link after the first delivery: process what arrived; acknowledging will fail
                // and the broker redelivers.
                Ok(Some((_, Err(_)))) | Ok(None) | Err(_) => break,
            }
        }
        self.deadline = None;
        // Everything already received (at most the prefetch) is chosen from, without waiting for more.
        loop {
            let consumers = &mut self.link.as_mut().expect("connected").consumers;
            let Some(Some((lane, Ok(d)))) = consumers.next().now_or_never() else {
                break;
            };
            let d = self.delivery(lane, d);
            self.pending.push(d);
        }
        // What the batch does not take waits for the next one, in its order.
        let sizes: Vec<Sized> = self
            .pending
            .iter()
            .map(|p| Sized {
                application: p.application,
                commands: p.commands,
                bytes: p.delivery.payload.len(),
            })
            .collect();
        let mut chosen = fair_batch(&sizes, limits).into_iter().peekable();
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for (index, pending) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if chosen.next_if_eq(&index).is_some() {
                batch.push(pending.delivery);
            } else {
                rest.push(pending);
            }
        }
        self.pending = rest;
        Ok(batch)
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> CoreResult<()> {
        let Some(link) = self.link.as_mut() else {
            return Err(unavailable("not connected"));
        };
        // Tags of an earlier connection mean nothing on this one: the broker redelivers those.
        let current = deliveries
            .iter()
            .filter(|d| d.connection == self.connection);
        for delivery in current {
            link.lanes[delivery.lane].acks.settle(delivery.tag);
        }
        let mut result = Ok(());
        for lane in &mut link.lanes {
            if let Some(through) = lane.acks.advance() {
                result = lane
                    .channel
                    .basic_ack(through, BasicAckOptions { multiple: true })
                    .await;
                if result.is_err() {
                    break;
                }
            }
        }
        result.map_err(|e| self.broken(e))
    }

    async fn set_aside(
        &mut self,
        delivery: &Delivery,
        command: &[u8],
        reason: &str,
    ) -> CoreResult<()> {
        if delivery.connection != self.connection {
            // Delivered on a connection that broke: the broker redelivers it, and it is judged again.
            return Ok(());
        }
        let Some(link) = &self.link else {
            return Err(unavailable("not connected"));
        };
        let mut headers = FieldTable::default();
        for (name, value) in &delivery.headers {
            headers.insert(
                ShortString::from(name.clone()),
                AMQPValue::LongString(LongString::from(value.clone())),
            );
        }
        headers.insert(
            ShortString::from("x-chatsys-reason"),
            AMQPValue::LongString(LongString::from(reason.to_string())),
        );
        let lane = &link.lanes[delivery.lane];
        headers.insert(ShortString::from("x-chatsys-queue"), text(&lane.queue));
        let properties = persistent(1).with_headers(headers);
        let channel = lane.channel.clone();
        let result =
            publish_confirmed(&channel, &self.queues.dead_letters(), command, properties).await;
        result.map_err(|e| self.broken(e))
    }
}

/// What of one channel's deliveries the worker settled. Batches take deliveries out of their order
/// (in turn among applications), while one acknowledgement covers every tag up to its own: so the
/// broker is told only of the settled run from the channel's first tag, never of a tag before one
/// still being applied.
#[derive(Debug, Default)]
struct LaneAcks {
    /// Every tag up to this one is settled.
    through: u64,
    /// Settled tags after a gap.
    waiting: std::collections::BTreeSet<u64>,
}

impl LaneAcks {
    fn settle(&mut self, tag: u64) {
        if tag > self.through {
            self.waiting.insert(tag);
        }
    }

    /// The tag to acknowledge, with every one before it, when the run from the first grew.
    fn advance(&mut self) -> Option<u64> {
        let before = self.through;
        while self.waiting.first() == Some(&(self.through + 1)) {
            self.through = self.waiting.pop_first().expect("a first tag");
        }
        (self.through > before).then_some(self.through)
    }
}

/// What choosing a batch needs to know of a delivery.
#[derive(Debug, Clone, Copy)]
struct Sized {
    /// `None` when unreadable.
    application: Option<AppId>,
    commands: usize,
    bytes: usize,
}

/// The deliveries (their indices, in order) of a batch that takes in turn one of each application's,
/// in the order each application first appears, within the limits: one application's run of commands
/// does not fill a batch while another's wait behind it.
fn fair_batch(deliveries: &[Sized], limits: &BatchLimits) -> Vec<usize> {
    let mut turns: Vec<std::collections::VecDeque<usize>> = Vec::new();
    let mut turn_of: std::collections::HashMap<Option<AppId>, usize> = Default::default();
    for (index, delivery) in deliveries.iter().enumerate() {
        let turn = *turn_of.entry(delivery.application).or_insert_with(|| {
            turns.push(Default::default());
            turns.len() - 1
        });
        turns[turn].push_back(index);
    }
    let mut chosen = Vec::new();
    let (mut bytes, mut commands) = (0, 0);
    'rounds: while commands < limits.commands {
        let mut took = false;
        for turn in &mut turns {
            let Some(&index) = turn.front() else { continue };
            let delivery = deliveries[index];
            if !chosen.is_empty()
                && (bytes + delivery.bytes > limits.bytes
                    || commands + delivery.commands > limits.commands)
            {
                break 'rounds;
            }
            turn.pop_front();
            chosen.push(index);
            bytes += delivery.bytes;
            commands += delivery.commands;
            took = true;
            if commands >= limits.commands {
                break 'rounds;
            }
        }
        if !took {
            break;
        }
    }
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatsys_core::domain;

    fn message(application_id: u64, chat_number: u64) -> Command {
        Command::CreateMessage {
            application_id,
            chat_number,
            chat_created_at: domain::now(),
            number: 1,
            body: "hi".into(),
            at: domain::now(),
        }
    }

    #[test]
    fn one_quorum_queue_is_named_after_the_base_apart_from_the_classic_ones() {
        let queues = CommandQueues::new("chatsys.commands", 1);
        assert_eq!(queues.names(), ["chatsys.commands.quorum"]);
        assert_eq!(queues.of(&message(7, 3)), 0);
        assert_eq!(queues.dead_letters(), "chatsys.commands.quorum.dead");
        assert_eq!(queues.classic_name(0), "chatsys.commands");
        assert_eq!(queues.classic_dead_letters(), "chatsys.commands.dead");
    }

    #[test]
    fn more_queues_keep_the_first_name_and_share_one_dead_letter_queue() {
        let queues = CommandQueues::new("chatsys.commands", 3);
        assert_eq!(
            queues.names(),
            [
                "chatsys.commands.quorum",
                "chatsys.commands.quorum.1",
                "chatsys.commands.quorum.2"
            ]
        );
        assert_eq!(queues.dead_letters(), "chatsys.commands.quorum.dead");
        assert_eq!(queues.classic_name(2), "chatsys.commands.2");
    }

    #[test]
    fn a_chats_commands_share_a_queue_and_one_applications_chats_spread_over_all() {
        let queues = CommandQueues::new("q", 4);
        let chat = CommandQueues::of(&queues, &message(1, 5));
        assert_eq!(
            queues.of(&Command::CreateChat {
                application_id: 1,
                number: 5,
                at: domain::now()
            }),
            chat
        );
        let mut per_queue = [0usize; 4];
        for chat in 1..=4000 {
            per_queue[queues.of(&message(1, chat))] += 1;
        }
        assert!(
            per_queue.iter().all(|&count| (800..=1200).contains(&count)),
            "one application's chats over 4 queues: {per_queue:?}"
        );
    }

    fn queue(name: &str, messages: u64, consumers: u32) -> QueueState {
        QueueState {
            name: name.into(),
            messages,
            consumers,
        }
    }

    #[test]
    fn a_queue_without_consumers_strands_commands_only_while_another_has_some() {
        assert_eq!(
            stranding(&[queue("q", 5, 0), queue("q.1", 5, 0)], &[]),
            None
        );
        assert_eq!(
            stranding(&[queue("q", 5, 2), queue("q.1", 5, 2)], &[]),
            None
        );
        let reason = stranding(
            &[queue("q", 5, 1), queue("q.1", 5, 1), queue("q.2", 0, 0)],
            &[],
        );
        assert!(reason.unwrap().contains("q.2 has no consumer"));
    }

    #[test]
    fn a_classic_queue_without_consumers_strands_commands_only_while_it_holds_some() {
        let consumed = [queue("q.quorum", 0, 1)];
        assert_eq!(stranding(&consumed, &[queue("q", 0, 0)]), None);
        let reason = stranding(&consumed, &[queue("q", 0, 0), queue("q.1", 3, 0)]);
        assert!(reason.unwrap().contains("q.1 has no consumer"));
        // Workers of the earlier release still consume it while none consumes the quorum queues.
        let reason = stranding(&[queue("q.quorum", 3, 0)], &[queue("q", 3, 2)]);
        assert!(reason.unwrap().contains("q.quorum has no consumer"));
    }

    #[test]
    fn only_the_settled_run_from_the_first_tag_is_acknowledged() {
        let mut acks = LaneAcks::default();
        // A batch took tags 3 and 4 before 1 and 2: nothing may be acknowledged yet.
        acks.settle(3);
        acks.settle(4);
        assert_eq!(acks.advance(), None);
        acks.settle(1);
        assert_eq!(acks.advance(), Some(1));
        acks.settle(2);
        assert_eq!(
            acks.advance(),
            Some(4),
            "the run goes through 4, acknowledged as one"
        );
        assert_eq!(acks.advance(), None, "nothing left to acknowledge");
        acks.settle(4);
        assert_eq!(
            acks.advance(),
            None,
            "a tag settled twice is acknowledged once"
        );
        acks.settle(5);
        assert_eq!(acks.advance(), Some(5));
    }

    fn delivery(app: Option<AppId>, commands: usize, bytes: usize) -> Sized {
        Sized {
            application: app,
            commands,
            bytes,
        }
    }

    fn limits(commands: usize, bytes: usize) -> BatchLimits {
        BatchLimits {
            commands,
            bytes,
            wait: Duration::ZERO,
        }
    }

    #[test]
    fn a_batch_takes_each_applications_commands_in_turn() {
        // Application 1 queued six before application 2's two; each is 300 bytes.
        let pending: Vec<Sized> = [1, 1, 1, 1, 1, 1, 2, 2]
            .into_iter()
            .map(|app| delivery(Some(app), 1, 300))
            .collect();
        assert_eq!(fair_batch(&pending, &limits(4, 1 << 20)), [0, 1, 6, 7]);
        assert_eq!(fair_batch(&pending, &limits(3, 1 << 20)), [0, 1, 6]);
        // Within the bytes too.
        assert_eq!(fair_batch(&pending, &limits(100, 700)), [0, 6]);
        // A command over the byte limit goes alone.
        assert_eq!(
            fair_batch(&[delivery(Some(1), 1, 5000)], &limits(10, 100)),
            [0]
        );
        // Unreadable ones take their own turn, to be dead-lettered.
        let unreadable = [
            delivery(Some(1), 1, 1),
            delivery(Some(1), 1, 1),
            delivery(None, 1, 1),
        ];
        assert_eq!(fair_batch(&unreadable, &limits(2, 100)), [0, 2]);
        assert!(fair_batch(&[], &limits(10, 100)).is_empty());
    }

    #[test]
    fn a_batch_counts_the_commands_of_envelopes() {
        let pending = [
            delivery(Some(1), 40, 100),
            delivery(Some(2), 40, 100),
            delivery(Some(3), 1, 100),
        ];
        // 40 + 40 is over 60 commands: the batch ends at the first envelope; the next takes the others.
        assert_eq!(fair_batch(&pending, &limits(60, 1 << 20)), [0]);
        assert_eq!(fair_batch(&pending[1..], &limits(60, 1 << 20)), [0, 1]);
        assert_eq!(fair_batch(&pending, &limits(81, 1 << 20)), [0, 1, 2]);
        // An envelope larger than the whole limit goes alone.
        assert_eq!(fair_batch(&pending, &limits(10, 1 << 20)), [0]);
    }
}
