//! Socket-free tests: client and server sessions talking in memory, byte-level fixtures of
//! what FFmpeg sends, and hostile input.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::super::amf0::{self, Amf0Value};
use super::super::chunk::{ChunkDecoder, ChunkEncoder, DecoderLimits, RawMessage};
use super::super::message::{self, Command, Message, UserControl};
use super::*;

fn text(s: &str) -> Amf0Value {
    Amf0Value::String(s.to_owned())
}

/// Decodes everything one side sends, across calls (the chunk size changes mid-stream).
struct Peer {
    decoder: ChunkDecoder,
    buf: BytesMut,
}

impl Peer {
    fn new() -> Self {
        Self { decoder: ChunkDecoder::new(DecoderLimits::default()), buf: BytesMut::new() }
    }

    fn read(&mut self, bytes: &[u8]) -> Vec<(RawMessage, Message)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(raw) = self.decoder.decode(&mut self.buf).expect("session output decodes") {
            let msg = Message::parse(&raw).expect("session output parses");
            out.push((raw, msg));
        }
        assert!(self.buf.is_empty(), "session output ends on a message boundary");
        out
    }
}

/// The commands among decoded messages, with the message stream and chunk stream they came on.
fn commands(messages: &[(RawMessage, Message)]) -> Vec<(u32, u32, Command)> {
    messages
        .iter()
        .filter_map(|(raw, msg)| match msg {
            Message::Command { command, .. } => Some((raw.csid, raw.stream_id, command.clone())),
            _ => None,
        })
        .collect()
}

fn info_code(cmd: &Command) -> Option<&str> {
    cmd.args.first()?.property("code")?.as_str()
}

/// A raw client that hand-encodes messages like FFmpeg does (chunk size 128).
struct RawClient {
    encoder: ChunkEncoder,
}

impl RawClient {
    fn new() -> Self {
        Self { encoder: ChunkEncoder::new() }
    }

    fn message(&mut self, csid: u32, timestamp: u32, stream_id: u32, msg: &Message) -> Vec<u8> {
        let (type_id, payload) = msg.encode();
        let mut out = BytesMut::new();
        self.encoder.encode(&RawMessage { csid, timestamp, type_id, stream_id, payload }, &mut out);
        out.to_vec()
    }

    fn command(&mut self, stream_id: u32, name: &str, txn: f64, object: Amf0Value, args: Vec<Amf0Value>) -> Vec<u8> {
        let command = Command { name: name.to_owned(), transaction_id: txn, object, args };
        self.message(3, 0, stream_id, &Message::Command { command, amf3: false })
    }

    fn connect(&mut self, app: &str, tc_url: &str) -> Vec<u8> {
        let object = Amf0Value::object([
            ("app", text(app)),
            ("flashVer", text("FMLE/3.0 (compatible; Lavf61.7.100)")),
            ("tcUrl", text(tc_url)),
            ("type", text("nonprivate")),
        ]);
        self.command(0, "connect", 1.0, object, Vec::new())
    }
}

/// A server with a client connected through the real handshake-less byte path.
fn connected_server(config: ServerConfig) -> (ServerSession, RawClient, Peer) {
    let mut server = ServerSession::new(config);
    let mut client = RawClient::new();
    let mut peer = Peer::new();
    let events = server.handle_input(&client.connect("live", "rtmp://localhost/live")).unwrap();
    assert!(matches!(events[..], [ServerEvent::Connect { .. }]));
    server.accept_connect();
    peer.read(&server.take_output());
    (server, client, peer)
}

fn client_to_server(client: &mut ClientSession, server: &mut ServerSession) -> Vec<ServerEvent> {
    server.handle_input(&client.take_output()).expect("server accepts the client's bytes")
}

fn server_to_client(server: &mut ServerSession, client: &mut ClientSession) -> Vec<ClientEvent> {
    client.handle_input(&server.take_output()).expect("client accepts the server's bytes")
}

/// Connects a client session and creates one stream; returns its id.
fn connect_and_create(client: &mut ClientSession, server: &mut ServerSession, key: &str) -> u32 {
    client.connect("live", &format!("rtmp://127.0.0.1/live?{key}")).unwrap();
    let events = client_to_server(client, server);
    let [ServerEvent::Connect { app, query, .. }] = &events[..] else { panic!("{events:?}") };
    assert_eq!((app.as_str(), query.as_deref()), ("live", Some(key)));
    server.accept_connect();
    assert_eq!(server_to_client(server, client), [ClientEvent::Connected]);
    client.create_stream().unwrap();
    let events = client_to_server(client, server);
    let [ServerEvent::CreateStream { stream_id }] = events[..] else { panic!("{events:?}") };
    let events = server_to_client(server, client);
    assert_eq!(events, [ClientEvent::StreamCreated { stream_id }]);
    stream_id
}

fn statuses(events: &[ClientEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Status { level, code, .. } => Some((level.clone(), code.clone())),
            _ => None,
        })
        .collect()
}

fn metadata() -> (Bytes, Bytes) {
    let meta = amf0::encode_all(&[
        text("onMetaData"),
        Amf0Value::EcmaArray(vec![
            ("width".into(), Amf0Value::Number(1280.0)),
            ("height".into(), Amf0Value::Number(720.0)),
        ]),
    ]);
    let mut with = amf0::encode_all(&[text("@setDataFrame")]);
    with.extend_from_slice(&meta);
    (Bytes::from(with), Bytes::from(meta))
}

/// An AVC sequence header and frames as FLV video tag bodies.
fn avc(keyframe: bool, packet_type: u8, len: usize) -> Bytes {
    let mut body = vec![if keyframe { 0x17 } else { 0x27 }, packet_type, 0, 0, 0];
    body.extend((0..len).map(|i| i as u8));
    Bytes::from(body)
}

#[test]
fn publish_and_play_conversation() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut publisher = ClientSession::default();
    let stream_id = connect_and_create(&mut publisher, &mut server, "key=abc");
    assert_eq!(stream_id, 1);
    assert_eq!(server.outgoing_chunk_size(), 4096);

    publisher.publish(stream_id, "cam?key=secret").unwrap();
    let events = client_to_server(&mut publisher, &mut server);
    assert_eq!(
        events,
        [ServerEvent::Publish {
            stream_id,
            name: "cam".into(),
            query: Some("key=secret".into()),
            mode: PublishMode::Live
        }]
    );
    assert!(publisher.send_video(stream_id, 0, avc(true, 0, 10)).is_err(), "not publishing yet");
    server.accept_publish(stream_id);
    let events = server_to_client(&mut server, &mut publisher);
    assert_eq!(statuses(&events), [("status".to_owned(), "NetStream.Publish.Start".to_owned())]);
    assert_eq!(events.last(), Some(&ClientEvent::PublishStarted { stream_id }));

    let (with_set_data_frame, meta) = metadata();
    let header = avc(true, 0, 30);
    let frames = [avc(true, 1, 9000), avc(false, 1, 300), avc(false, 1, 5000)];
    publisher.send_data(stream_id, 0, with_set_data_frame).unwrap();
    publisher.send_video(stream_id, 0, header.clone()).unwrap();
    publisher.send_audio(stream_id, 0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10])).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        publisher.send_video(stream_id, 40 * i as u32 + 40, frame.clone()).unwrap();
    }
    let events = client_to_server(&mut publisher, &mut server);
    let mut expected = vec![
        ServerEvent::Data { stream_id, timestamp: 0, payload: meta.clone() },
        ServerEvent::Video { stream_id, timestamp: 0, payload: header.clone() },
        ServerEvent::Audio { stream_id, timestamp: 0, payload: Bytes::from_static(&[0xAF, 0, 0x12, 0x10]) },
    ];
    for (i, frame) in frames.iter().enumerate() {
        expected.push(ServerEvent::Video { stream_id, timestamp: 40 * i as u32 + 40, payload: frame.clone() });
    }
    assert_eq!(events, expected);

    // A second client plays, on its own connection.
    let mut player_server = ServerSession::new(ServerConfig::default());
    let mut player = ClientSession::default();
    let play_id = connect_and_create(&mut player, &mut player_server, "token=t");
    player.play(play_id, "cam").unwrap();
    let events = client_to_server(&mut player, &mut player_server);
    assert_eq!(
        events,
        [
            ServerEvent::BufferLength { stream_id: play_id, ms: 3000 },
            ServerEvent::Play { stream_id: play_id, name: "cam".into(), query: None, start: Some(-2.0), length: None }
        ]
    );
    player_server.accept_play(play_id);
    player_server.send_data(play_id, 0, meta.clone());
    player_server.send_video(play_id, 0, header.clone());
    player_server.send_audio(play_id, 10, Bytes::from_static(b"\xAF\x01aac"));
    for (i, frame) in frames.iter().enumerate() {
        player_server.send_video(play_id, 40 * i as u32 + 40, frame.clone());
    }
    let events = server_to_client(&mut player_server, &mut player);
    assert_eq!(
        statuses(&events),
        [("status".into(), "NetStream.Play.Reset".into()), ("status".into(), "NetStream.Play.Start".into())]
    );
    assert!(events.contains(&ClientEvent::PlayStarted { stream_id: play_id }));
    // The data messages of a play: `|RtmpSampleAccess` and the publisher's own, no
    // `onStatus` (ffmpeg would list it as a stream of codec "none").
    let data_names: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Data { payload, .. } => message::data_name(payload),
            _ => None,
        })
        .collect();
    assert_eq!(data_names, ["|RtmpSampleAccess", "onMetaData"]);
    let media: Vec<_> = events
        .into_iter()
        .filter(|e| match e {
            ClientEvent::Data { payload, .. } => message::data_name(payload).as_deref() == Some("onMetaData"),
            ClientEvent::Audio { .. } | ClientEvent::Video { .. } => true,
            _ => false,
        })
        .collect();
    let mut expected = vec![
        ClientEvent::Data { stream_id: play_id, timestamp: 0, payload: meta },
        ClientEvent::Video { stream_id: play_id, timestamp: 0, payload: header },
        ClientEvent::Audio { stream_id: play_id, timestamp: 10, payload: Bytes::from_static(b"\xAF\x01aac") },
    ];
    for (i, frame) in frames.iter().enumerate() {
        expected.push(ClientEvent::Video { stream_id: play_id, timestamp: 40 * i as u32 + 40, payload: frame.clone() });
    }
    assert_eq!(media, expected);

    // The publisher leaves: players hear UnpublishNotify and StreamEOF.
    publisher.close_stream(stream_id).unwrap();
    let events = client_to_server(&mut publisher, &mut server);
    assert_eq!(events, [ServerEvent::StreamClosed { stream_id }]);
    player_server.end_of_stream(play_id);
    let events = server_to_client(&mut player_server, &mut player);
    assert!(statuses(&events).contains(&("status".into(), "NetStream.Play.UnpublishNotify".into())));
    assert!(events.contains(&ClientEvent::StreamEof { stream_id: play_id }));
}

#[test]
fn play_not_found_and_publish_rejected() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut client = ClientSession::default();
    let id = connect_and_create(&mut client, &mut server, "k=v");

    client.play(id, "missing").unwrap();
    let events = client_to_server(&mut client, &mut server);
    assert_eq!(
        events,
        [
            ServerEvent::BufferLength { stream_id: id, ms: 3000 },
            ServerEvent::Play { stream_id: id, name: "missing".into(), query: None, start: Some(-2.0), length: None }
        ]
    );
    server.play_not_found(id, "missing");
    let events = server_to_client(&mut server, &mut client);
    assert_eq!(statuses(&events), [("error".into(), "NetStream.Play.StreamNotFound".into())]);
    server.send_video(id, 0, avc(true, 1, 4));
    assert!(server.take_output().is_empty(), "no media to a stream that is not playing");

    // The stream is idle again: publishing on it is allowed, and can be refused.
    client.publish(id, "taken").unwrap();
    let events = client_to_server(&mut client, &mut server);
    assert!(matches!(&events[..], [ServerEvent::Publish { name, .. }] if name == "taken"));
    server.reject_publish(id, PublishRejection::BadName, "taken is already published.");
    let events = server_to_client(&mut server, &mut client);
    let [ClientEvent::Status { stream_id, level, code, description }] = &events[..] else { panic!("{events:?}") };
    assert_eq!((*stream_id, level.as_str(), code.as_str()), (id, "error", "NetStream.Publish.BadName"));
    assert_eq!(description, "taken is already published.");
    // Media from a refused publisher is ignored.
    assert!(client.send_video(id, 0, avc(true, 1, 4)).is_err());
    client.publish(id, "other").unwrap();
    client_to_server(&mut client, &mut server);
    server.reject_publish(id, PublishRejection::Denied, "bad key");
    let events = server_to_client(&mut server, &mut client);
    assert_eq!(statuses(&events), [("error".into(), "NetStream.Publish.Denied".into())]);
    client.publish(id, "guarded?token=x").unwrap();
    let events = client_to_server(&mut client, &mut server);
    assert!(matches!(&events[..], [ServerEvent::Publish { query: Some(q), .. }] if q == "token=x"));
    server.reject_publish(id, PublishRejection::Unauthorized, "this stream requires a publish token");
    let events = server_to_client(&mut server, &mut client);
    assert_eq!(statuses(&events), [("error".into(), "NetStream.Publish.Unauthorized".into())]);
}

#[test]
fn play_rejected_for_its_token_and_tried_again() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut client = ClientSession::default();
    let id = connect_and_create(&mut client, &mut server, "k=v");

    client.play(id, "cam?token=rs1.a.b").unwrap();
    let events = client_to_server(&mut client, &mut server);
    assert_eq!(
        events,
        [
            ServerEvent::BufferLength { stream_id: id, ms: 3000 },
            ServerEvent::Play {
                stream_id: id,
                name: "cam".into(),
                query: Some("token=rs1.a.b".into()),
                start: Some(-2.0),
                length: None
            }
        ]
    );
    server.reject_play(id, "the token expired");
    let events = server_to_client(&mut server, &mut client);
    let [ClientEvent::Status { stream_id, level, code, description }] = &events[..] else { panic!("{events:?}") };
    assert_eq!((*stream_id, level.as_str(), code.as_str()), (id, "error", "NetStream.Play.Failed"));
    assert_eq!(description, "the token expired");
    server.send_video(id, 0, avc(true, 1, 4));
    assert!(server.take_output().is_empty(), "no media to a refused player");
    // Rejecting a stream that is not waiting for a decision does nothing.
    server.reject_play(id, "again");
    assert!(server.take_output().is_empty());

    // Idle again: the same stream may play with another token.
    client.play(id, "cam?token=good").unwrap();
    client_to_server(&mut client, &mut server);
    server.accept_play(id);
    let events = server_to_client(&mut server, &mut client);
    assert!(statuses(&events).contains(&("status".into(), "NetStream.Play.Start".into())));
}

#[test]
fn connect_rejected() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut client = ClientSession::default();
    client.connect("private", "rtmp://h/private").unwrap();
    client_to_server(&mut client, &mut server);
    server.reject_connect("No such app.");
    let events = server_to_client(&mut server, &mut client);
    assert_eq!(
        events,
        [ClientEvent::ConnectRejected {
            code: "NetConnection.Connect.Rejected".into(),
            description: "No such app.".into()
        }]
    );
    assert!(client.create_stream().is_err());
    assert!(!server.is_connected());
}

#[test]
fn ffmpeg_publish_fixture() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut client = RawClient::new();
    let mut peer = Peer::new();
    let connect = client.connect("live", "rtmp://127.0.0.1:1935/live?key=abc");
    let events = server.handle_input(&connect).unwrap();
    let [ServerEvent::Connect { app, tc_url, query, object }] = &events[..] else { panic!("{events:?}") };
    assert_eq!(app, "live");
    assert_eq!(tc_url.as_deref(), Some("rtmp://127.0.0.1:1935/live?key=abc"));
    assert_eq!(query.as_deref(), Some("key=abc"));
    assert_eq!(object.property("type").and_then(Amf0Value::as_str), Some("nonprivate"));
    assert!(server.take_output().is_empty(), "nothing is said before the driver decides");
    server.accept_connect();
    let reply = peer.read(&server.take_output());
    let kinds: Vec<_> = reply.iter().map(|(raw, msg)| (raw.csid, msg.clone())).collect();
    assert_eq!(kinds[0], (2, Message::WindowAckSize(2_500_000)));
    assert_eq!(kinds[1], (2, Message::SetPeerBandwidth { size: 2_500_000, limit_type: 2 }));
    assert_eq!(kinds[2], (2, Message::SetChunkSize(4096)));
    let [(3, 0, result)] = &commands(&reply)[..] else { panic!("{reply:?}") };
    assert_eq!((result.name.as_str(), result.transaction_id), ("_result", 1.0));
    assert_eq!(result.object.property("fmsVer").and_then(Amf0Value::as_str), Some("FMS/3,5,7,7009"));
    assert_eq!(result.object.property("capabilities").and_then(Amf0Value::as_f64), Some(31.0));
    assert_eq!(info_code(result), Some("NetConnection.Connect.Success"));
    assert_eq!(result.args[0].property("objectEncoding").and_then(Amf0Value::as_f64), Some(0.0));

    // FFmpeg's next burst, fed one byte at a time.
    let name = text("foo?key=secret");
    let mut wire = Vec::new();
    wire.extend(client.command(0, "releaseStream", 2.0, Amf0Value::Null, vec![name.clone()]));
    wire.extend(client.command(0, "FCPublish", 3.0, Amf0Value::Null, vec![name.clone()]));
    wire.extend(client.command(0, "createStream", 4.0, Amf0Value::Null, vec![]));
    wire.extend(client.command(1, "publish", 5.0, Amf0Value::Null, vec![name, text("LIVE")]));
    let mut events = Vec::new();
    for byte in &wire {
        events.extend(server.handle_input(std::slice::from_ref(byte)).unwrap());
    }
    assert_eq!(
        events,
        [
            ServerEvent::CreateStream { stream_id: 1 },
            ServerEvent::Publish {
                stream_id: 1,
                name: "foo".into(),
                query: Some("key=secret".into()),
                mode: PublishMode::Live
            },
        ]
    );
    let reply = commands(&peer.read(&server.take_output()));
    let summary: Vec<_> =
        reply.iter().map(|(csid, msid, c)| (*csid, *msid, c.name.as_str(), c.transaction_id)).collect();
    assert_eq!(
        summary,
        [(3, 0, "_result", 2.0), (3, 0, "_result", 3.0), (3, 0, "onFCPublish", 0.0), (3, 0, "_result", 4.0)]
    );
    assert_eq!(info_code(&reply[2].2), Some("NetStream.Publish.Start"));
    assert_eq!(reply[2].2.args[0].property("description").and_then(Amf0Value::as_str), Some("foo"));
    assert_eq!(reply[3].2.args, [Amf0Value::Number(1.0)]);

    server.accept_publish(1);
    let reply = peer.read(&server.take_output());
    assert_eq!(reply[0].1, Message::UserControl(UserControl::StreamBegin(1)));
    let [(5, 1, status)] = &commands(&reply)[..] else { panic!("{reply:?}") };
    assert_eq!((status.name.as_str(), status.transaction_id, &status.object), ("onStatus", 0.0, &Amf0Value::Null));
    assert_eq!(info_code(status), Some("NetStream.Publish.Start"));
    assert_eq!(status.args[0].property("details").and_then(Amf0Value::as_str), Some("foo"));

    // Metadata longer than the 128-byte chunks, then video; then FFmpeg's teardown.
    let properties = vec![("encoder".to_owned(), text(&"x".repeat(300))), ("fps".to_owned(), Amf0Value::Number(30.0))];
    let on_meta_data = [text("onMetaData"), Amf0Value::EcmaArray(properties)];
    let stripped = Bytes::from(amf0::encode_all(&on_meta_data));
    let long_meta = Bytes::from([amf0::encode_all(&[text("@setDataFrame")]), stripped.to_vec()].concat());
    let mut wire = client.message(4, 0, 1, &Message::Data { payload: long_meta, amf3: false });
    wire.extend(client.message(6, 33, 1, &Message::Video(avc(true, 1, 200))));
    wire.extend(client.command(0, "FCUnpublish", 6.0, Amf0Value::Null, vec![text("foo?key=secret")]));
    wire.extend(client.command(0, "deleteStream", 7.0, Amf0Value::Null, vec![Amf0Value::Number(1.0)]));
    let events = server.handle_input(&wire).unwrap();
    assert_eq!(
        events,
        [
            ServerEvent::Data { stream_id: 1, timestamp: 0, payload: stripped },
            ServerEvent::Video { stream_id: 1, timestamp: 33, payload: avc(true, 1, 200) },
            ServerEvent::StreamClosed { stream_id: 1 },
        ]
    );
    let reply = commands(&peer.read(&server.take_output()));
    let codes: Vec<_> = reply.iter().map(|(_, _, c)| (c.name.as_str(), info_code(c))).collect();
    assert_eq!(
        codes,
        [
            ("_result", None),
            ("onFCUnpublish", Some("NetStream.Unpublish.Success")),
            ("onStatus", Some("NetStream.Unpublish.Success"))
        ]
    );
}

#[test]
fn publish_mode_and_app_query() {
    for (mode, expected) in [
        ("live", PublishMode::Live),
        ("Record", PublishMode::Record),
        ("APPEND", PublishMode::Append),
        ("appendWithGap", PublishMode::Append),
        ("weird", PublishMode::Live),
    ] {
        assert_eq!(PublishMode::parse(mode), expected);
    }
    let mut server = ServerSession::new(ServerConfig::default());
    let mut client = RawClient::new();
    let events = server.handle_input(&client.connect("live?token=1", "rtmp://h/live?token=2")).unwrap();
    let [ServerEvent::Connect { app, query, .. }] = &events[..] else { panic!("{events:?}") };
    assert_eq!((app.as_str(), query.as_deref()), ("live", Some("token=1")));
}

#[test]
fn acknowledgements_follow_the_peer_window() {
    let mut server = ServerSession::new(ServerConfig::default());
    let (mut client, mut peer) = (RawClient::new(), Peer::new());
    let connect = client.connect("live", "rtmp://h/live");
    server.handle_input(&connect).unwrap();
    server.accept_connect();
    peer.read(&server.take_output());
    let mut total = connect.len() as u64;
    let window = client.message(2, 0, 0, &Message::WindowAckSize(1000));
    total += window.len() as u64;
    server.handle_input(&window).unwrap();
    let mut acks = Vec::new();
    for i in 0..40u32 {
        // Ignored media: no stream publishes; the bytes still count.
        let wire = client.message(6, i * 20, 1, &Message::Audio(Bytes::from(vec![0xAF; 100])));
        let before = total;
        total += wire.len() as u64;
        server.handle_input(&wire).unwrap();
        for (_, msg) in peer.read(&server.take_output()) {
            let Message::Acknowledgement { sequence } = msg else { panic!("{msg:?}") };
            assert_eq!(u64::from(sequence), total, "acknowledges the running total");
            let last = acks.last().copied().unwrap_or(0);
            assert!(before - last <= 1000 && total - last > 1000, "exactly when the window is exceeded");
            acks.push(total);
        }
    }
    assert_eq!(acks.len(), 4, "{acks:?}");
    assert_eq!(server.ignored_messages(), 40);
}

#[test]
fn client_acknowledges_and_answers_pings() {
    let config = ServerConfig { window_ack_size: 1000, chunk_size: 128, ..ServerConfig::default() };
    let mut server = ServerSession::new(config);
    let mut client = ClientSession::default();
    // Everything the client says, decoded.
    let mut said = Vec::new();
    let mut server_peer = Peer::new();
    let mut relay = |client: &mut ClientSession, server: &mut ServerSession| {
        let bytes = client.take_output();
        said.extend(server_peer.read(&bytes).into_iter().map(|(_, m)| m));
        server.handle_input(&bytes).unwrap()
    };
    client.connect("live", "rtmp://h/live").unwrap();
    relay(&mut client, &mut server);
    server.accept_connect();
    server_to_client(&mut server, &mut client);
    client.create_stream().unwrap();
    relay(&mut client, &mut server);
    let [ClientEvent::StreamCreated { stream_id: id }] = server_to_client(&mut server, &mut client)[..] else {
        panic!("no stream")
    };
    client.play(id, "s").unwrap();
    relay(&mut client, &mut server);
    server.accept_play(id);
    for i in 0..20 {
        server.send_video(id, i * 40, Bytes::from(vec![0x27; 200]));
    }
    server_to_client(&mut server, &mut client);
    relay(&mut client, &mut server);
    // The client answered Set Peer Bandwidth with its window, sent its chunk size, asked for a
    // buffer before playing and acknowledged the server's window.
    assert!(said.contains(&Message::WindowAckSize(2_500_000)));
    assert!(said.contains(&Message::SetChunkSize(4096)));
    assert!(said.contains(&Message::UserControl(UserControl::SetBufferLength { stream_id: id, millis: 3000 })));
    assert!(said.iter().any(|m| matches!(m, Message::Acknowledgement { sequence } if *sequence > 1000)));

    let mut raw = ChunkEncoder::new();
    let mut ping = BytesMut::new();
    let (type_id, payload) = Message::UserControl(UserControl::PingRequest(1234)).encode();
    raw.encode(&RawMessage { csid: 2, timestamp: 0, type_id, stream_id: 0, payload }, &mut ping);
    let mut server2 = ServerSession::new(ServerConfig::default());
    server2.handle_input(&ping).unwrap();
    let reply = Peer::new().read(&server2.take_output());
    assert_eq!(reply[0].1, Message::UserControl(UserControl::PingResponse(1234)));
}

#[test]
fn prechunked_media_reaches_the_player() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut player = ClientSession::default();
    let id = connect_and_create(&mut player, &mut server, "x=y");
    player.play(id, "live").unwrap();
    client_to_server(&mut player, &mut server);
    server.accept_play(id);
    server_to_client(&mut server, &mut player);

    let chunk_size = server.outgoing_chunk_size();
    let big = avc(true, 1, 10_000);
    let fanned_out = RawMessage { csid: CSID_VIDEO, timestamp: 140, type_id: 9, stream_id: id, payload: big.clone() };
    let shared = prechunk(&fanned_out, chunk_size).unwrap();
    assert!(prechunk(&RawMessage { csid: 1, ..fanned_out.clone() }, chunk_size).is_none());
    // The encoder's own messages on the same chunk stream before and after the shared bytes.
    server.send_video(id, 100, avc(false, 1, 50));
    server.send_prechunked(shared.clone());
    server.send_video(id, 180, avc(false, 1, 50));
    server.send_prechunked(shared);
    server.send_audio(id, 190, Bytes::from_static(b"\xAF\x01a"));
    let events = server_to_client(&mut server, &mut player);
    assert_eq!(
        events,
        [
            ClientEvent::Video { stream_id: id, timestamp: 100, payload: avc(false, 1, 50) },
            ClientEvent::Video { stream_id: id, timestamp: 140, payload: big.clone() },
            ClientEvent::Video { stream_id: id, timestamp: 180, payload: avc(false, 1, 50) },
            ClientEvent::Video { stream_id: id, timestamp: 140, payload: big },
            ClientEvent::Audio { stream_id: id, timestamp: 190, payload: Bytes::from_static(b"\xAF\x01a") },
        ]
    );
}

#[test]
fn aggregate_messages_are_split() {
    let (mut server, mut client, _) = connected_server(ServerConfig::default());
    let mut wire = client.command(0, "createStream", 2.0, Amf0Value::Null, vec![]);
    wire.extend(client.command(1, "publish", 3.0, Amf0Value::Null, vec![text("s"), text("live")]));
    server.handle_input(&wire).unwrap();
    server.accept_publish(1);
    let mut body = Vec::new();
    for (type_id, ts, payload) in [(9u8, 1000u32, &b"key"[..]), (8, 1020, b"aac"), (9, 1040, b"inter")] {
        let len = payload.len() as u32;
        body.extend([type_id, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
        body.extend([(ts >> 16) as u8, (ts >> 8) as u8, ts as u8, (ts >> 24) as u8, 0, 0, 0]);
        body.extend(payload);
        body.extend((11 + len).to_be_bytes());
    }
    body.extend([9, 0, 0]); // truncated tail
    let events = server.handle_input(&client.message(6, 500, 1, &Message::Aggregate(body.into()))).unwrap();
    assert_eq!(
        events,
        [
            ServerEvent::Video { stream_id: 1, timestamp: 500, payload: Bytes::from_static(b"key") },
            ServerEvent::Audio { stream_id: 1, timestamp: 520, payload: Bytes::from_static(b"aac") },
            ServerEvent::Video { stream_id: 1, timestamp: 540, payload: Bytes::from_static(b"inter") },
        ]
    );
}

#[test]
fn amf3_commands_get_amf0_answers() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut client = RawClient::new();
    let object = Amf0Value::object([("app", text("live")), ("objectEncoding", Amf0Value::Number(3.0))]);
    let command = Command { name: "connect".into(), transaction_id: 1.0, object, args: vec![] };
    let wire = client.message(3, 0, 0, &Message::Command { command, amf3: true });
    assert_eq!(server.handle_input(&wire).unwrap().len(), 1);
    server.accept_connect();
    let reply = Peer::new().read(&server.take_output());
    let (raw, Message::Command { command, .. }) = reply.last().unwrap() else { panic!() };
    assert_eq!(raw.type_id, message::COMMAND_AMF0);
    assert_eq!(command.args[0].property("objectEncoding").and_then(Amf0Value::as_f64), Some(3.0));
}

#[test]
fn unknown_commands_and_too_many_streams_get_errors() {
    let config = ServerConfig { max_streams: 3, ..ServerConfig::default() };
    let (mut server, mut client, mut peer) = connected_server(config);
    let mut wire = Vec::new();
    for txn in 2..7 {
        wire.extend(client.command(0, "createStream", f64::from(txn), Amf0Value::Null, vec![]));
    }
    wire.extend(client.command(0, "noSuchMethod", 9.0, Amf0Value::Null, vec![]));
    wire.extend(client.command(0, "noSuchNotification", 0.0, Amf0Value::Null, vec![]));
    let events = server.handle_input(&wire).unwrap();
    let created: Vec<_> = events.iter().map(|e| matches!(e, ServerEvent::CreateStream { .. })).collect();
    assert_eq!(created, [true; 3]);
    let reply = commands(&peer.read(&server.take_output()));
    let names: Vec<_> = reply.iter().map(|(_, _, c)| (c.name.as_str(), c.transaction_id)).collect();
    assert_eq!(
        names,
        [("_result", 2.0), ("_result", 3.0), ("_result", 4.0), ("_error", 5.0), ("_error", 6.0), ("_error", 9.0)]
    );
    // Deleting a stream frees a slot; ids are not reused.
    let mut wire = client.command(0, "deleteStream", 0.0, Amf0Value::Null, vec![Amf0Value::Number(2.0)]);
    wire.extend(client.command(0, "createStream", 10.0, Amf0Value::Null, vec![]));
    assert_eq!(server.handle_input(&wire).unwrap(), [ServerEvent::CreateStream { stream_id: 4 }]);
}

#[test]
fn hostile_sequences() {
    // A publish before connect: `_error`, no event.
    let mut server = ServerSession::new(ServerConfig::default());
    let mut client = RawClient::new();
    let wire = client.command(1, "publish", 5.0, Amf0Value::Null, vec![text("x")]);
    assert_eq!(server.handle_input(&wire).unwrap(), []);
    let reply = commands(&Peer::new().read(&server.take_output()));
    assert_eq!(reply[0].2.name, "_error");
    server.accept_publish(1);
    assert!(server.take_output().is_empty());

    // Media on streams that do not publish: ignored.
    let (mut server, mut client, mut peer) = connected_server(ServerConfig::default());
    let mut wire = client.command(0, "createStream", 2.0, Amf0Value::Null, vec![]);
    wire.extend(client.message(6, 0, 1, &Message::Video(avc(true, 1, 10))));
    wire.extend(client.message(6, 0, 7, &Message::Video(avc(true, 1, 10))));
    wire.extend(client.message(4, 0, 0, &Message::Data { payload: metadata().0, amf3: false }));
    wire.extend(client.command(1, "publish", 3.0, Amf0Value::Null, vec![text("")]));
    wire.extend(client.command(5, "play", 4.0, Amf0Value::Null, vec![text("nostream")]));
    assert_eq!(server.handle_input(&wire).unwrap(), [ServerEvent::CreateStream { stream_id: 1 }]);
    assert_eq!(server.ignored_messages(), 3);
    // Decisions for things never asked are no-ops.
    server.accept_play(1);
    server.accept_publish(9);
    server.end_of_stream(1);
    let reply = commands(&peer.read(&server.take_output()));
    let codes: Vec<_> = reply.iter().map(|(_, _, c)| (c.name.as_str(), info_code(c))).collect();
    assert_eq!(
        codes,
        [
            ("_result", None),
            ("onStatus", Some("NetStream.Publish.BadName")),
            ("_error", Some("NetConnection.Call.Failed"))
        ]
    );

    // A command with invalid AMF closes the session, and it stays failed.
    let bad = RawMessage {
        csid: 3,
        timestamp: 0,
        type_id: message::COMMAND_AMF0,
        stream_id: 0,
        payload: Bytes::from_static(&[0x02, 0, 9, b'x']),
    };
    let mut wire = BytesMut::new();
    client.encoder.encode(&bad, &mut wire);
    assert!(matches!(server.handle_input(&wire), Err(SessionError::Message(_))));
    assert_eq!(server.handle_input(&[]), Err(SessionError::Failed));

    // Overlong names are refused without reaching the driver.
    let (mut server, mut client, _) = connected_server(ServerConfig::default());
    let mut wire = client.command(0, "createStream", 2.0, Amf0Value::Null, vec![]);
    wire.extend(client.command(1, "publish", 3.0, Amf0Value::Null, vec![text(&"n".repeat(MAX_NAME_LEN + 1))]));
    assert_eq!(server.handle_input(&wire).unwrap(), [ServerEvent::CreateStream { stream_id: 1 }]);

    // Garbage chunk streams are errors, not panics.
    let mut server = ServerSession::new(ServerConfig::default());
    assert!(matches!(server.handle_input(&[0x43, 0, 0, 0]), Err(SessionError::Chunk(_))));
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..200 {
        let mut server = ServerSession::new(ServerConfig::default());
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = server.handle_input(&bytes);
        let _ = server.take_output();
    }
}

#[test]
fn oversized_outgoing_payloads_are_dropped() {
    let mut server = ServerSession::new(ServerConfig::default());
    let mut player = ClientSession::default();
    let id = connect_and_create(&mut player, &mut server, "a=1");
    player.play(id, "s").unwrap();
    client_to_server(&mut player, &mut server);
    server.accept_play(id);
    server.take_output();
    server.send_video(id, 0, Bytes::from(vec![0; 0x100_0000]));
    assert!(server.take_output().is_empty());
    assert_eq!(server.dropped_messages(), 1);
}

/// Commands a fuzzer picks from, with arguments of any shape.
fn arb_command() -> impl Strategy<Value = (u32, Command)> {
    let names = prop::sample::select(vec![
        "connect",
        "createStream",
        "publish",
        "play",
        "closeStream",
        "deleteStream",
        "releaseStream",
        "FCPublish",
        "FCUnpublish",
        "FCSubscribe",
        "getStreamLength",
        "_checkbw",
        "other",
    ]);
    let arg = prop_oneof![
        Just(Amf0Value::Null),
        any::<f64>().prop_map(Amf0Value::Number),
        (0u32..5).prop_map(|n| Amf0Value::Number(f64::from(n))),
        "[a-z?=]{0,12}".prop_map(Amf0Value::String),
        Just(Amf0Value::object([])),
    ];
    (0u32..4, names, prop_oneof![Just(0.0), any::<f64>(), 1.0..9.0f64], prop::collection::vec(arg, 0..4)).prop_map(
        |(msid, name, transaction_id, args)| {
            (msid, Command { name: name.to_owned(), transaction_id, object: Amf0Value::Null, args })
        },
    )
}

proptest! {
    #[test]
    fn arbitrary_bytes_after_connect_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), split in any::<prop::sample::Index>()) {
        let (mut server, _, mut peer) = connected_server(ServerConfig::default());
        let at = split.index(bytes.len() + 1);
        let first = server.handle_input(&bytes[..at]);
        let _ = server.handle_input(&bytes[at..]);
        if first.is_ok() {
            // Whatever the server said is still a valid chunk stream.
            peer.read(&server.take_output());
        }
    }

    #[test]
    fn arbitrary_commands_keep_output_valid(
        script in prop::collection::vec((arb_command(), 0u8..6), 0..40),
    ) {
        let (mut server, mut client, mut peer) = connected_server(ServerConfig { max_streams: 2, ..ServerConfig::default() });
        for ((msid, command), decision) in script {
            let wire = client.message(3, 0, msid, &Message::Command { command, amf3: false });
            let events = server.handle_input(&wire).unwrap();
            for event in events {
                match (event, decision) {
                    (ServerEvent::Publish { stream_id, .. }, 0..=2) => server.accept_publish(stream_id),
                    (ServerEvent::Publish { stream_id, .. }, _) => {
                        server.reject_publish(stream_id, PublishRejection::BadName, "no")
                    }
                    (ServerEvent::Play { stream_id, .. }, 0..=2) => {
                        server.accept_play(stream_id);
                        server.send_video(stream_id, 0, Bytes::from_static(b"\x17\x01"));
                        server.end_of_stream(stream_id);
                    }
                    (ServerEvent::Play { stream_id, name, .. }, _) => server.play_not_found(stream_id, &name),
                    _ => {}
                }
            }
            let video = client.message(6, 0, msid, &Message::Video(Bytes::from_static(b"\x27\x01")));
            server.handle_input(&video).unwrap();
            peer.read(&server.take_output());
        }
    }
}

#[test]
fn a_reconnect_request_goes_only_to_clients_that_advertise_the_capability() {
    // capsEx absent, without the reconnect bit, with it (alone or with others), and junk.
    for (caps, capable) in [
        (None, false),
        (Some(0.0), false),
        (Some(2.0), false),
        (Some(1.0), true),
        (Some(3.0), true),
        (Some(-1.0), false),
    ] {
        let mut server = ServerSession::new(ServerConfig::default());
        let (mut client, mut peer) = (RawClient::new(), Peer::new());
        let mut props = vec![("app", text("live")), ("tcUrl", text("rtmp://edge/live"))];
        if let Some(caps) = caps {
            props.push(("capsEx", Amf0Value::Number(caps)));
        }
        server.handle_input(&client.command(0, "connect", 1.0, Amf0Value::object(props), Vec::new())).unwrap();
        assert!(!server.request_reconnect("too early", None), "nothing before the connect is accepted");
        server.accept_connect();
        peer.read(&server.take_output());
        assert_eq!(server.can_reconnect(), capable, "capsEx {caps:?}");
        assert_eq!(server.request_reconnect("draining", Some("rtmp://lb/live")), capable, "capsEx {caps:?}");
        let sent = peer.read(&server.take_output());
        if !capable {
            assert!(sent.is_empty(), "capsEx {caps:?}: {sent:?}");
            continue;
        }
        let [(raw, Message::Command { command, .. })] = &sent[..] else { panic!("{sent:?}") };
        assert_eq!((raw.stream_id, command.name.as_str()), (0, "onStatus"));
        let info = &command.args[0];
        assert_eq!(info.property("code").and_then(Amf0Value::as_str), Some("NetConnection.Connect.ReconnectRequest"));
        assert_eq!(info.property("tcUrl").and_then(Amf0Value::as_str), Some("rtmp://lb/live"));
        assert_eq!(info.property("level").and_then(Amf0Value::as_str), Some("status"));
    }
}

/// A recorded stream's conversation: the start position, buffer length, `seek`,
/// `pause`, `getStreamLength` reach the driver as events, only on a playing stream,
/// and the answers are what ffmpeg and librtmp wait for.
#[test]
fn recorded_stream_controls_and_answers() {
    let (mut server, mut client, mut peer) = connected_server(ServerConfig::default());
    let created = server.handle_input(&client.command(0, "createStream", 2.0, Amf0Value::Null, vec![])).unwrap();
    let [ServerEvent::CreateStream { stream_id: id }] = created[..] else { panic!("{created:?}") };
    peer.read(&server.take_output());
    // Before the play: a seek is not reported; the buffer length is kept.
    let seek =
        |client: &mut RawClient, ms: f64| client.command(id, "seek", 0.0, Amf0Value::Null, vec![Amf0Value::Number(ms)]);
    assert_eq!(server.handle_input(&seek(&mut client, 1000.0)).unwrap(), []);
    let buffer = UserControl::SetBufferLength { stream_id: id, millis: 36_000_000 };
    let events = server.handle_input(&client.message(2, 0, 0, &Message::UserControl(buffer))).unwrap();
    assert_eq!(events, [ServerEvent::BufferLength { stream_id: id, ms: 36_000_000 }]);
    assert_eq!(server.buffer_length(id), Some(36_000_000));
    let args = vec![text("42"), Amf0Value::Number(5000.0), Amf0Value::Number(4000.0)];
    let events = server.handle_input(&client.command(id, "play", 0.0, Amf0Value::Null, args)).unwrap();
    let play =
        ServerEvent::Play { stream_id: id, name: "42".into(), query: None, start: Some(5000.0), length: Some(4000.0) };
    assert_eq!(events, [play]);
    server.accept_play(id);
    server.send_metadata(id, 61.5);
    peer.read(&server.take_output());

    let events = server.handle_input(&seek(&mut client, 20_000.0)).unwrap();
    assert_eq!(events, [ServerEvent::Seek { stream_id: id, ms: 20_000.0 }]);
    server.seek_notify(id, 19_200);
    let pause = |client: &mut RawClient, p: bool| {
        client.command(id, "pause", 0.0, Amf0Value::Null, vec![Amf0Value::Boolean(p), Amf0Value::Number(19_500.0)])
    };
    let events = server.handle_input(&pause(&mut client, true)).unwrap();
    assert_eq!(events, [ServerEvent::Pause { stream_id: id, pause: true, ms: 19_500.0 }]);
    server.pause_notify(id, true, 19_500);
    server.handle_input(&pause(&mut client, false)).unwrap();
    server.pause_notify(id, false, 19_500);
    server.buffer_empty(id);
    server.play_complete(id, 61.5);
    // No name: 0 at once.
    let length = client.command(0, "getStreamLength", 6.0, Amf0Value::Null, vec![Amf0Value::Null]);
    let events = server.handle_input(&length).unwrap();
    assert_eq!(events, []);
    let length = client.command(0, "getStreamLength", 7.0, Amf0Value::Null, vec![text("42")]);
    let events = server.handle_input(&length).unwrap();
    assert_eq!(events, [ServerEvent::StreamLength { transaction_id: 7.0, name: "42".into() }]);
    server.answer_stream_length(7.0, 61.5);

    let messages = peer.read(&server.take_output());
    let codes: Vec<String> =
        commands(&messages).iter().filter_map(|(_, _, c)| info_code(c).map(str::to_owned)).collect();
    assert_eq!(
        codes,
        [
            "NetStream.Seek.Notify",
            "NetStream.Play.Start",
            "NetStream.Pause.Notify",
            "NetStream.Unpause.Notify",
            "NetStream.Play.Stop"
        ]
    );
    let controls: Vec<&UserControl> =
        messages.iter().filter_map(|(_, m)| if let Message::UserControl(u) = m { Some(u) } else { None }).collect();
    assert_eq!(
        controls,
        [
            &UserControl::StreamBegin(id),
            &UserControl::StreamEof(id),
            &UserControl::StreamBegin(id),
            &UserControl::Other { event: 31, data: Bytes::copy_from_slice(&id.to_be_bytes()) },
            &UserControl::StreamEof(id),
        ]
    );
    let data: Vec<Vec<Amf0Value>> = messages
        .iter()
        .filter_map(|(_, m)| if let Message::Data { payload, .. } = m { amf0::decode_all(payload).ok() } else { None })
        .collect();
    assert_eq!(data[0][0], text("onPlayStatus"));
    assert_eq!(data[0][1].property("code").and_then(Amf0Value::as_str), Some("NetStream.Play.Complete"));
    let results: Vec<f64> = commands(&messages)
        .iter()
        .filter(|(_, _, c)| c.name == "_result")
        .filter_map(|(_, _, c)| c.args.first().and_then(Amf0Value::as_f64))
        .collect();
    assert_eq!(results, [0.0, 61.5], "no length without a name, then the stream's");
}
