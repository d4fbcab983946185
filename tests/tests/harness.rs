//! The harness's own promises, checked without a gateway: a started
//! `redis-server` answers on its port, restarts empty on the same port,
//! flushes, and is gone once killed or dropped.

use anyhow::{ensure, Result};
use tests::{within, RedisServer};

#[tokio::test]
async fn redis_server_restarts_empty_on_the_same_port() -> Result<()> {
    within(async {
        let mut redis = RedisServer::start().await?;
        let port = redis.port();
        ensure!(
            redis.url() == format!("redis://127.0.0.1:{port}"),
            "url {}",
            redis.url()
        );

        redis.cmd(&["SET", "k", "v"]).await?;
        ensure!(
            redis.cmd(&["GET", "k"]).await?.as_str() == Some("v"),
            "SET/GET round trip"
        );

        redis.kill()?;
        ensure!(
            redis.cmd(&["PING"]).await.is_err(),
            "a killed redis still answers"
        );

        redis.restart().await?;
        ensure!(
            redis.port() == port,
            "restart moved to port {}",
            redis.port()
        );
        ensure!(
            redis.cmd(&["GET", "k"]).await?.as_str().is_none(),
            "a restarted redis kept its data"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn redis_server_flushall_drops_keys_and_drop_kills_it() -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        redis.cmd(&["SET", "k", "v"]).await?;
        redis.flushall().await?;
        ensure!(
            redis.cmd(&["DBSIZE"]).await?.as_int() == Some(0),
            "keys survived FLUSHALL"
        );
        ensure!(
            redis.numsub("gw:{nobody}:p").await? == 0,
            "NUMSUB of an unused channel"
        );

        let probe = RedisServer::start().await?;
        let port = redis.port();
        drop(redis);
        let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        ensure!(refused.is_err(), "redis on {port} still accepts after drop");
        ensure!(
            probe.cmd(&["PING"]).await?.as_str() == Some("PONG"),
            "the other server died too"
        );
        Ok(())
    })
    .await
}
