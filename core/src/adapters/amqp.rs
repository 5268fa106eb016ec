//! RabbitMQ: the durable command queue. Publishing shares a few confirm-mode channels across all
//! concurrent requests (a publish waits for its own confirm, never for other requests' ones); consuming
//! uses manual acknowledgements with a prefetch window.

use crate::telemetry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::sync::Mutex;

use crate::command::Command;
use crate::error::{Backend, CoreError, CoreResult};
use crate::ports::{CommandSource, Delivery, Queue};

fn unavailable(e: impl std::fmt::Display) -> CoreError {
    CoreError::unavailable(Backend::Queue, e)
}

/// The dead-letter queue of a command queue.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
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

/// Declares the durable command queue and its dead-letter queue (idempotent).
pub async fn declare(channel: &Channel, queue: &str) -> CoreResult<()> {
    for name in [queue.to_string(), dead_letter_queue(queue)] {
        channel
            .queue_declare(
                ShortString::from(name),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
}

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

pub struct AmqpQueue {
    url: String,
    queue: String,
    channel_count: usize,
    publish_timeout: Duration,
    link: Mutex<LinkState>,
    next_channel: AtomicUsize,
}

impl AmqpQueue {
    pub fn new(url: &str, queue: &str, channel_count: usize, publish_timeout: Duration) -> Self {
        AmqpQueue {
            url: url.to_string(),
            queue: queue.to_string(),
            channel_count: channel_count.max(1),
            publish_timeout,
            link: Mutex::new(LinkState::Down {
                since: Instant::now() - RECONNECT_PAUSE,
                reason: "not connected".into(),
            }),
            next_channel: AtomicUsize::new(0),
        }
    }

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
        declare(&channels[0], &self.queue).await?;
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

#[async_trait]
impl Queue for AmqpQueue {
    async fn ping(&self) -> CoreResult<()> {
        self.link().await.map(|_| ())
    }

    async fn publish(&self, command: &Command) -> CoreResult<()> {
        let started = Instant::now();
        let link = self.link().await?;
        let channel =
            &link.channels[self.next_channel.fetch_add(1, Ordering::Relaxed) % link.channels.len()];
        let result = tokio::time::timeout(
            self.publish_timeout,
            publish_confirmed(channel, &self.queue, &command.encode(), persistent()),
        )
        .await
        .unwrap_or_else(|_| Err(unavailable("RabbitMQ did not confirm in time")));
        metrics::histogram!(telemetry::QUEUE_PUBLISH.name, "result" => if result.is_ok() { "ok" } else { "error" })
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn backlog(&self) -> CoreResult<u64> {
        self.depth(&self.queue).await
    }
}

impl AmqpQueue {
    /// Commands the worker refused for good, waiting in the dead-letter queue.
    pub async fn dead_letters(&self) -> CoreResult<u64> {
        self.depth(&dead_letter_queue(&self.queue)).await
    }

    /// Messages ready in a queue, read with a passive declare on a channel of its own.
    async fn depth(&self, queue: &str) -> CoreResult<u64> {
        let link = self.link().await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let queue = channel
            .queue_declare(
                ShortString::from(queue.to_string()),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::durable()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let _ = channel.close(200, ShortString::from("done")).await;
        Ok(u64::from(queue.message_count()))
    }
}

/// The consuming side of the command queue, reconnecting after a broker restart.
pub struct AmqpSource {
    url: String,
    queue: String,
    prefetch: u16,
    link: Option<SourceLink>,
    /// Counts connections; a delivery tag only means something on the connection that gave it.
    connection: u64,
    /// Deliveries taken from the consumer but not yet returned: `next_batch` may be cancelled while
    /// it waits for more, and must not lose what it already took.
    pending: Vec<Delivery>,
    deadline: Option<tokio::time::Instant>,
}

struct SourceLink {
    _connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl AmqpSource {
    pub fn new(url: &str, queue: &str, prefetch: u16) -> Self {
        AmqpSource {
            url: url.to_string(),
            queue: queue.to_string(),
            prefetch,
            link: None,
            connection: 0,
            pending: Vec::new(),
            deadline: None,
        }
    }

    async fn open(&self) -> CoreResult<SourceLink> {
        let connection = connect(&self.url, "chatsys-worker").await?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        declare(&channel, &self.queue).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                ShortString::from(self.queue.clone()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(SourceLink {
            _connection: connection,
            channel,
            consumer,
        })
    }

    /// Forgets the connection; everything it delivered and nobody acknowledged comes back from the broker.
    fn broken(&mut self, e: impl std::fmt::Display) -> CoreError {
        self.link = None;
        self.pending.clear();
        self.deadline = None;
        unavailable(e)
    }

    fn delivery(&self, d: lapin::message::Delivery) -> Delivery {
        Delivery {
            tag: d.delivery_tag,
            connection: self.connection,
            payload: d.data,
            redelivered: d.redelivered,
        }
    }
}

#[async_trait]
impl CommandSource for AmqpSource {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> CoreResult<Vec<Delivery>> {
        if self.link.is_none() {
            self.link = Some(self.open().await?);
            self.connection += 1;
        }
        if self.pending.is_empty() {
            let next = self
                .link
                .as_mut()
                .expect("link was just opened")
                .consumer
                .next()
                .await;
            match next {
                Some(Ok(d)) => {
                    let d = self.delivery(d);
                    self.pending.push(d);
                    self.deadline = Some(tokio::time::Instant::now() + wait);
                }
                Some(Err(e)) => return Err(self.broken(e)),
                None => return Err(self.broken("the broker cancelled the consumer")),
            }
        }
        let deadline = self.deadline.unwrap_or_else(tokio::time::Instant::now);
        while self.pending.len() < max {
            let next = tokio::time::timeout_at(
                deadline,
                self.link.as_mut().expect("connected").consumer.next(),
            )
            .await;
            match next {
                Ok(Some(Ok(d))) => {
                    let d = self.delivery(d);
                    self.pending.push(d);
                }
                // A broken link after the first delivery: process what arrived; acknowledging will fail
                // and the broker redelivers.
                Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            }
        }
        self.deadline = None;
        Ok(std::mem::take(&mut self.pending))
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> CoreResult<()> {
        let current = self.connection;
        let Some(last) = deliveries
            .iter()
            .filter(|d| d.connection == current)
            .map(|d| d.tag)
            .max()
        else {
            return Ok(());
        };
        let Some(link) = &self.link else {
            return Err(unavailable("not connected"));
        };
        // Tags arrive in order, and every earlier one of this connection was handed out in an earlier
        // batch that is acknowledged already, or was dead-lettered.
        let result = link
            .channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await;
        result.map_err(|e| self.broken(e))
    }

    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> CoreResult<()> {
        if delivery.connection != self.connection {
            // Delivered on a connection that broke: the broker redelivers it, and it is judged again.
            return Ok(());
        }
        let Some(link) = &self.link else {
            return Err(unavailable("not connected"));
        };
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-chatsys-reason"),
            AMQPValue::LongString(LongString::from(reason.to_string())),
        );
        headers.insert(
            ShortString::from("x-chatsys-queue"),
            AMQPValue::LongString(LongString::from(self.queue.clone())),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let channel = link.channel.clone();
        let result = async {
            publish_confirmed(
                &channel,
                &dead_letter_queue(&self.queue),
                &delivery.payload,
                properties,
            )
            .await?;
            channel
                .basic_ack(delivery.tag, BasicAckOptions { multiple: false })
                .await
                .map_err(unavailable)
        }
        .await;
        result.map_err(|e| self.broken(e))
    }
}
