"""Files that declare their origin, built byte by byte for the provenance tests and tools: XMP
packets in JPEG APP1 / PNG iTXt, PNG text chunks, and C2PA-signed JPEGs (a CA + leaf ES256
certificate chain made on the fly; signing needs cryptography and c2pa-python)."""
from __future__ import annotations

import datetime
import io
import struct
import zlib
from pathlib import Path

import numpy as np

AI_URI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def make_chain(tmp: Path, org: str = "Test Org"):
    """A CA and a leaf ES256 certificate as C2PA requires (leaf: digitalSignature, an allowed EKU,
    AKI/SKI; CA: keyCertSign). Returns (chain PEM, leaf key PEM, CA PEM path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    base = lambda: (x509.CertificateBuilder().serial_number(x509.random_serial_number())  # noqa: E731
                    .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30)))
    ca = (base().subject_name(name(f"{org} CA")).issuer_name(name(f"{org} CA")).public_key(ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (base().subject_name(name(f"{org} Signer")).issuer_name(ca.subject).public_key(leaf_key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    key = leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    ca_path = tmp / f"{org.replace(' ', '_')}_ca.pem"
    ca_path.write_bytes(pem(ca))
    return pem(leaf) + pem(ca), key, ca_path


def sign_jpeg(src: bytes, chain: bytes, key: bytes, source_type: str = AI_URI) -> bytes:
    import c2pa

    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
    manifest = {"claim_generator_info": [{"name": "nsnet-test", "version": "1"}], "format": "image/jpeg",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": source_type}]}}]}
    out = io.BytesIO()
    c2pa.Builder(manifest).sign(signer, "image/jpeg", io.BytesIO(src), out)
    return out.getvalue()


def jpeg_bytes(seed: int = 0, size: int = 64) -> bytes:
    """A noise JPEG without metadata."""
    import cv2

    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    return buf.tobytes()


def png_bytes(seed: int = 0, size: int = 64) -> bytes:
    """A noise PNG without metadata."""
    import cv2

    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", rgb)
    assert ok
    return buf.tobytes()


def xmp_packet(dst: str, attribute: bool = True, tool: str | None = None) -> bytes:
    """An XMP packet declaring IPTC DigitalSourceType ``dst`` (attribute or element form)."""
    body = (f'Iptc4xmpExt:DigitalSourceType="{dst}"' if attribute else "")
    inner = "" if attribute else f"<Iptc4xmpExt:DigitalSourceType>{dst}</Iptc4xmpExt:DigitalSourceType>"
    if tool:
        inner += f"<xmp:CreatorTool>{tool}</xmp:CreatorTool>"
    return ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
            'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" {body}>{inner}</rdf:Description></rdf:RDF>'
            '</x:xmpmeta><?xpacket end="w"?>').encode()


def jpeg_with_app1(payload: bytes, base: bytes | None = None) -> bytes:
    """``base`` (default: `jpeg_bytes()`) with an APP1 segment holding ``payload`` after SOI."""
    data = base or jpeg_bytes()
    seg = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + seg + data[2:]


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_with(*chunks: bytes, base: bytes | None = None) -> bytes:
    """``base`` (default: `png_bytes()`) with ``chunks`` inserted after IHDR."""
    data = base or png_bytes()
    return data[:33] + b"".join(chunks) + data[33:]  # after the signature and IHDR
