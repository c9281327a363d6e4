//! `ringwire decode`: decodes one direction of a raw msgr2 byte stream (starting with the
//! banner) into a report of every frame, with every CRC checked.
//!
//! The text form prints control payloads with Ceph's field names, in the same vocabulary as
//! the captured listings in `shared/fixtures/msgr2/`, so the two can be compared line by line.

use std::fmt::Write as _;

use serde::Serialize;

use crate::proto::control::{
    hex_string, AuthNonePayload, Control, AUTH_METHOD_CEPHX, AUTH_METHOD_NONE, CON_MODE_CRC,
    CON_MODE_SECURE,
};
use crate::proto::frame::{
    Banner, FrameDecoder, FrameError, FrameLimits, SegmentDesc, Tag, BANNER_LEN,
};
use crate::proto::message::{Message, MsgHeader2};
use crate::proto::wire::WireError;
use crate::proto::ControlError;

/// One decoded frame.
#[derive(Debug, Clone, Serialize)]
pub struct FrameReport {
    pub offset: u64,
    pub tag: Tag,
    pub segments: Vec<SegmentDesc>,
    pub preamble_crc: u32,
    pub seg0_crc: Option<u32>,
    pub late_status: Option<u8>,
    pub epilogue_crcs: Option<[u32; 3]>,
    pub body: FrameBody,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameBody {
    Control {
        #[serde(flatten)]
        control: Control,
        /// The auth-none payload inside an AUTH_REQUEST, when it parses as one.
        auth_none: Option<AuthNonePayload>,
    },
    Message {
        header: MsgHeader2,
        front_len: usize,
        middle_len: usize,
        data_len: usize,
        /// Up to the first 96 bytes of each of front, middle and data, as hex.
        front_head: String,
        middle_head: String,
        data_head: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub banner: Banner,
    pub frames: Vec<FrameReport>,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("malformed message header: {0}")]
    MessageHeader(#[from] WireError),
    #[error("stream is shorter than the {BANNER_LEN}-byte banner")]
    ShortBanner,
}

/// A decoding failure: where, what, and the frames decoded before it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("at byte offset {offset}: {kind}")]
pub struct DecodeError {
    pub offset: u64,
    pub kind: DecodeErrorKind,
    pub partial: Option<StreamReport>,
}

const HEAD_BYTES: usize = 96;

fn head_hex(b: &[u8]) -> String {
    let mut s = hex_string(&b[..b.len().min(HEAD_BYTES)]);
    if b.len() > HEAD_BYTES {
        s.push_str("...");
    }
    s
}

/// Decodes a whole stream. Stops at the first malformed frame or CRC error.
pub fn decode_stream(data: &[u8], limits: FrameLimits) -> Result<StreamReport, DecodeError> {
    let fail = |offset, kind, partial| DecodeError {
        offset,
        kind,
        partial,
    };
    if data.len() < 10 {
        return Err(fail(0, DecodeErrorKind::ShortBanner, None));
    }
    let mut head = [0u8; 10];
    head.copy_from_slice(&data[..10]);
    let payload_len = Banner::decode_head(&head).map_err(|e| fail(0, e.into(), None))?;
    if data.len() < 10 + payload_len {
        return Err(fail(0, DecodeErrorKind::ShortBanner, None));
    }
    let banner = Banner::decode_payload(&data[10..10 + payload_len]);
    let start = 10 + payload_len;
    let mut report = StreamReport {
        banner,
        frames: Vec::new(),
        bytes: data.len() as u64,
    };
    let mut decoder = FrameDecoder::new(limits, start as u64);
    let mut input = &data[start..];
    loop {
        let offset = decoder.frame_offset();
        let frame = match decoder.feed(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(fail(offset, e.into(), Some(report))),
        };
        let p = frame.preamble;
        let segments = p.segments[..p.num_segments as usize].to_vec();
        let trailer = frame.trailer;
        let body = if p.tag == Tag::Message {
            let (header, msg) = Message::from_frame(frame)
                .map_err(|e| fail(offset, e.into(), Some(report.clone())))?;
            FrameBody::Message {
                header,
                front_len: msg.front.len(),
                middle_len: msg.middle.len(),
                data_len: msg.data_len(),
                front_head: head_hex(&msg.front),
                middle_head: head_hex(&msg.middle),
                data_head: head_hex(&msg.data_contiguous()),
            }
        } else {
            let control = Control::decode_frame(p.tag, frame.payload())
                .map_err(|e| fail(offset, e.into(), Some(report.clone())))?;
            let auth_none = match &control {
                Control::AuthRequest { auth_payload, .. } => {
                    AuthNonePayload::decode(auth_payload).ok()
                }
                _ => None,
            };
            FrameBody::Control { control, auth_none }
        };
        report.frames.push(FrameReport {
            offset,
            tag: p.tag,
            segments,
            preamble_crc: p.crc,
            seg0_crc: trailer.seg0_crc,
            late_status: trailer.epilogue.map(|e| e.0),
            epilogue_crcs: trailer.epilogue.map(|e| e.1),
            body,
        });
    }
    if let Err(e) = decoder.finish() {
        return Err(fail(decoder.frame_offset(), e.into(), Some(report)));
    }
    Ok(report)
}

fn mode_name(m: u32) -> String {
    match m {
        CON_MODE_CRC => "crc(1)".into(),
        CON_MODE_SECURE => "secure(2)".into(),
        m => m.to_string(),
    }
}

fn method_name(m: u32) -> String {
    match m {
        AUTH_METHOD_NONE => "none(1)".into(),
        AUTH_METHOD_CEPHX => "cephx(2)".into(),
        m => m.to_string(),
    }
}

fn u32_list(v: &[u32]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// The payload lines of a control frame, Ceph field names, one logical group per line.
pub fn control_lines(c: &Control, auth_none: Option<&AuthNonePayload>) -> Vec<String> {
    let mut out = Vec::new();
    match c {
        Control::Hello {
            entity_type,
            peer_addr,
        } => out.push(format!("entity_type={entity_type} peer_addr={peer_addr}")),
        Control::AuthRequest {
            method,
            preferred_modes,
            auth_payload,
        } => {
            let modes: Vec<String> = preferred_modes
                .iter()
                .map(|m| match *m {
                    CON_MODE_CRC => "crc".to_string(),
                    CON_MODE_SECURE => "secure".to_string(),
                    m => m.to_string(),
                })
                .collect();
            out.push(format!(
                "method={} preferred_modes=[{}] auth_payload({}B)={}",
                method_name(*method),
                modes.join(", "),
                auth_payload.len(),
                hex_string(auth_payload)
            ));
            match auth_none {
                Some(AuthNonePayload::MonClient { name, global_id }) => out.push(format!(
                    "  MonClient->mon payload: auth_mode=10(AUTH_MODE_MON) entity_name={name} global_id={global_id}"
                )),
                Some(AuthNonePayload::Authorizer {
                    struct_v,
                    name,
                    global_id,
                }) => out.push(format!(
                    "  AuthNone authorizer (daemon->daemon): struct_v={struct_v} entity_name={name} global_id={global_id}"
                )),
                None => {}
            }
        }
        Control::AuthBadMethod {
            method,
            result,
            allowed_methods,
            allowed_modes,
        } => out.push(format!(
            "method={method} result={result} allowed_methods={} allowed_modes={}",
            u32_list(allowed_methods),
            u32_list(allowed_modes)
        )),
        Control::AuthReplyMore { auth_payload } | Control::AuthRequestMore { auth_payload } => {
            out.push(format!("auth_payload={}", hex_string(auth_payload)))
        }
        Control::AuthDone {
            global_id,
            con_mode,
            auth_payload,
        } => out.push(format!(
            "global_id={global_id} con_mode={} auth_payload({}B)={}",
            mode_name(*con_mode),
            auth_payload.len(),
            hex_string(auth_payload)
        )),
        Control::AuthSignature { sha256 } => out.push(format!("sha256={}", hex_string(sha256))),
        Control::ClientIdent(ci) => {
            out.push(format!("addrs={}", ci.addrs));
            out.push(format!("target_addr={}", ci.target_addr));
            out.push(format!(
                "gid={} global_seq={} features_supported={:#018x} features_required={:#018x} flags={:#x} client_cookie={:#018x}",
                ci.gid, ci.global_seq, ci.features_supported, ci.features_required, ci.flags, ci.client_cookie
            ));
        }
        Control::ServerIdent(si) => {
            out.push(format!("addrs={}", si.addrs));
            out.push(format!(
                "gid={} global_seq={} features_supported={:#018x} features_required={:#018x} flags={:#x} server_cookie={:#018x}",
                si.gid, si.global_seq, si.features_supported, si.features_required, si.flags, si.server_cookie
            ));
        }
        Control::IdentMissingFeatures { features } => {
            out.push(format!("missing_features={features}"))
        }
        Control::SessionReconnect(r) => out.push(format!(
            "addrs={} client_cookie={:#x} server_cookie={:#x} global_seq={} connect_seq={} msg_seq={}",
            r.addrs, r.client_cookie, r.server_cookie, r.global_seq, r.connect_seq, r.msg_seq
        )),
        Control::SessionReset { full } => out.push(format!("full={}", *full as u8)),
        Control::SessionRetry { connect_seq } => out.push(format!("connect_seq={connect_seq}")),
        Control::SessionRetryGlobal { global_seq } => {
            out.push(format!("global_seq={global_seq}"))
        }
        Control::SessionReconnectOk { msg_seq } => out.push(format!("msg_seq={msg_seq}")),
        Control::Ack { seq } => out.push(format!("seq={seq}")),
        Control::Wait => {}
        Control::Keepalive2 { stamp } | Control::Keepalive2Ack { stamp } => {
            out.push(format!("utime sec={} nsec={}", stamp.sec, stamp.nsec))
        }
    }
    out
}

/// The `ceph_msg_header2` line.
pub fn header_line(h: &MsgHeader2) -> String {
    format!(
        "ceph_msg_header2: seq={} tid={} type={:#x} priority={} version={} data_pre_padding_len={} data_off={} ack_seq={} flags={:#x} compat_version={} reserved={}",
        h.seq, h.tid, h.ty, h.priority, h.version, h.data_pre_padding_len, h.data_off, h.ack_seq, h.flags, h.compat_version, h.reserved
    )
}

/// The human-readable report.
pub fn render_text(name: &str, report: &StreamReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{name}: {} bytes, banner supported={:#x} required={:#x}",
        report.bytes, report.banner.supported, report.banner.required
    );
    for f in &report.frames {
        render_frame(&mut s, f);
    }
    let _ = writeln!(s, "{name}: {} frames, all CRCs ok", report.frames.len());
    s
}

fn render_frame(s: &mut String, f: &FrameReport) {
    let segs: Vec<String> = f
        .segments
        .iter()
        .map(|d| format!("{}/{}", d.len, d.align))
        .collect();
    let _ = write!(
        s,
        "@{} {} segments=[{}] preamble_crc={:08x} ok",
        f.offset,
        f.tag,
        segs.join(", "),
        f.preamble_crc
    );
    if let Some(c) = f.seg0_crc {
        let _ = write!(s, " seg0_crc={c:08x} ok");
    }
    if let (Some(late), Some(crcs)) = (f.late_status, f.epilogue_crcs) {
        let used: Vec<String> = crcs[..f.segments.len() - 1]
            .iter()
            .map(|c| format!("{c:08x}"))
            .collect();
        let _ = write!(s, " late_status={late:#04x} crcs=[{}] ok", used.join(", "));
    }
    s.push('\n');
    match &f.body {
        FrameBody::Control { control, auth_none } => {
            for line in control_lines(control, auth_none.as_ref()) {
                let _ = writeln!(s, "   {line}");
            }
        }
        FrameBody::Message {
            header,
            front_len,
            middle_len,
            data_len,
            front_head,
            middle_head,
            data_head,
        } => {
            let _ = writeln!(s, "   {}", header_line(header));
            for (name, len, head) in [
                ("front", front_len, front_head),
                ("middle", middle_len, middle_head),
                ("data", data_len, data_head),
            ] {
                if *len > 0 {
                    let _ = writeln!(s, "   {name} {len}B: {head}");
                }
            }
        }
    }
}
