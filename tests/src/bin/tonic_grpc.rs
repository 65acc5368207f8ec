//! A gRPC server and client on tonic (Rust: hyper's h2 and its own HPACK encoder), for the
//! HTTP/2 end-to-end tests (tests/tests/http2.rs): a second implementation's framing and
//! HPACK choices beside grpcio's.
//!
//!   tonic_grpc server PORT                 prints "READY PORT", serves until killed
//!   tonic_grpc client ADDR [TRACEPARENT]   calls SayHello, Missing, Count; prints results
//!   tonic_grpc resume ADDR TRACEPARENT     calls SayHello, prints "paused", waits for a
//!                                          line on stdin, calls SayHello again on the same
//!                                          connection (the agent joins it in between);
//!                                          both calls send TRACEPARENT, so the second one
//!                                          refers to it by HPACK index
//!
//! The service is grpc_app.py's `hoptrace.test.Greeter` (raw-bytes messages, no codegen):
//! SayHello answers OK, Missing answers NOT_FOUND, Count streams three messages. The
//! client sends `tenant: acme` metadata, and the traceparent when given.

use std::{convert::Infallible, pin::Pin};

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError},
    server::{NamedService, ServerStreamingService, UnaryService},
    Request, Response, Status,
};

const SERVICE: &str = "hoptrace.test.Greeter";

/// Messages are raw bytes: no protobuf schema needed on either side.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

struct SayHello;
impl UnaryService<Bytes> for SayHello {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let mut reply = b"hello ".to_vec();
        reply.extend_from_slice(request.get_ref());
        Box::pin(async move { Ok(Response::new(Bytes::from(reply))) })
    }
}

struct Missing;
impl UnaryService<Bytes> for Missing {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;
    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        Box::pin(async { Err(Status::not_found("no such thing")) })
    }
}

type Messages = Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, Status>> + Send>>;

struct Count;
impl ServerStreamingService<Bytes> for Count {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = BoxFuture<Response<Messages>, Status>;
    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        let messages: Vec<Result<Bytes, Status>> = (0..3).map(|i| Ok(Bytes::from(format!("message {i}")))).collect();
        Box::pin(async move { Ok(Response::new(Box::pin(tokio_stream::iter(messages)) as Messages)) })
    }
}

#[derive(Clone)]
struct Greeter;

impl NamedService for Greeter {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for Greeter
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            Ok(match method.as_str() {
                "SayHello" => grpc.unary(SayHello, req).await,
                "Missing" => grpc.unary(Missing, req).await,
                "Count" => grpc.server_streaming(Count, req).await,
                _ => Status::unimplemented(method).into_http(),
            })
        })
    }
}

async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("READY {}", listener.local_addr()?.port());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder().add_service(Greeter).serve_with_incoming(incoming).await?;
    Ok(())
}

fn request(body: &'static [u8], traceparent: Option<&str>) -> anyhow::Result<Request<Bytes>> {
    let mut r = Request::new(Bytes::from_static(body));
    r.metadata_mut().insert("tenant", "acme".parse()?);
    if let Some(tp) = traceparent {
        r.metadata_mut().insert("traceparent", tp.parse()?);
    }
    Ok(r)
}

async fn client(addr: &str, traceparent: Option<&str>) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = |m: &str| -> anyhow::Result<http::uri::PathAndQuery> { Ok(format!("/{SERVICE}/{m}").parse()?) };
    grpc.ready().await?;
    let hello = grpc.unary(request(b"world", traceparent)?, path("SayHello")?, Raw).await?;
    println!("result SayHello {}", String::from_utf8_lossy(hello.get_ref()));
    grpc.ready().await?;
    match grpc.unary(request(b"x", traceparent)?, path("Missing")?, Raw).await {
        Ok(_) => anyhow::bail!("Missing answered OK"),
        Err(status) => println!("result Missing {:?}", status.code()),
    }
    grpc.ready().await?;
    let mut stream = grpc.server_streaming(request(b"", traceparent)?, path("Count")?, Raw).await?.into_inner();
    let mut n = 0;
    while stream.message().await?.is_some() {
        n += 1;
    }
    println!("result Count {n}");
    Ok(())
}

/// One connection: a call before the pause, one after (see the module doc).
async fn resume(addr: &str, traceparent: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let path: http::uri::PathAndQuery = format!("/{SERVICE}/SayHello").parse()?;
    grpc.ready().await?;
    grpc.unary(request(b"before", Some(traceparent))?, path.clone(), Raw).await?;
    println!("paused");
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
    grpc.ready().await?;
    let reply = grpc.unary(request(b"after", Some(traceparent))?, path, Raw).await?;
    println!("result SayHello {}", String::from_utf8_lossy(reply.get_ref()));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("server"), Some(port)) => rt.block_on(serve(port.parse()?)),
        (Some("client"), Some(addr)) => rt.block_on(client(addr, args.get(3).map(String::as_str))),
        (Some("resume"), Some(addr)) if args.len() == 4 => rt.block_on(resume(addr, &args[3])),
        _ => anyhow::bail!("usage: tonic_grpc server PORT | client ADDR [TRACEPARENT] | resume ADDR TRACEPARENT"),
    }
}
