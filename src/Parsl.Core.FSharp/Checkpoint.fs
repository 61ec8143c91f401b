namespace Parsl

open System
open System.Buffers.Binary
open System.Text

/// When checkpoints are written (Parsl's `checkpoint_mode`).
type CheckpointMode =
    /// Each cached task's result as soon as the task completes.
    | TaskExit
    /// The results gathered so far, every `Config.CheckpointPeriod`.
    | Periodic
    /// When the kernel is cleaned up.
    | DfkExit
    /// When the program calls `DataFlowKernel.CheckpointAsync` (and at cleanup).
    | Manual

/// A checkpoint file cannot be read: missing, not a checkpoint, a newer format, or a value that cannot be
/// rebuilt (Parsl's `BadCheckpoint`). Raised when the kernel loads.
type BadCheckpoint(path: string, reason: string, inner: exn) =
    inherit ParslException(sprintf "Bad checkpoint %s: %s" path reason, inner)
    /// The file or directory.
    member _.Path = path

/// One checkpointed result.
type CheckpointRecord =
    { Key: MemoKey
      /// The app that produced it (for people reading the file; not part of the match).
      AppName: string
      /// The assembly-qualified name of the value's runtime type; empty for null.
      TypeName: string
      /// The value, serialized by the runtime (MessagePack, contractless, of `TypeName`).
      Value: byte[] }

/// The result of reading a checkpoint file.
type CheckpointContents =
    { Records: CheckpointRecord list
      /// Bytes at the end that did not form a whole, intact record (a write cut short by a crash); skipped.
      TornBytes: int }

/// The checkpoint file format, version 1 (pure: bytes in, bytes out). A file is append-only:
///
///   file    = header record*
///   header  = "PARSLCKP" (8 ASCII bytes) | version: u16 = 1 | reserved: u16 = 0
///   record  = "RC" (2 bytes) | length: u32 | payload (length bytes) | crc32(payload): u32
///   payload = key (32 bytes, SHA-256) | appName: u16 length + UTF-8 | typeName: u16 length + UTF-8 | value (rest)
///
/// Integers are little-endian; the CRC is CRC-32 (IEEE 802.3, as zlib). A reader stops at the first record
/// that is incomplete or fails its CRC and reports the bytes it skipped: a crash in the middle of an append
/// loses that record only. Exceptions are never written (as in Parsl).
[<RequireQualifiedAccess>]
module Checkpoint =
    /// The format version this code writes and reads.
    [<Literal>]
    let Version = 1us

    /// The name of the checkpoint file inside a checkpoint directory.
    [<Literal>]
    let FileName = "tasks.ckpt"

    let private magic = "PARSLCKP"B

    /// The length of the file header.
    [<Literal>]
    let HeaderLength = 12

    let private crcTable =
        lazy
            (Array.init 256 (fun n ->
                let mutable c = uint32 n
                for _ in 0..7 do
                    c <- if c &&& 1u <> 0u then 0xEDB88320u ^^^ (c >>> 1) else c >>> 1
                c))

    /// CRC-32 (IEEE) of the bytes.
    let crc32 (data: ReadOnlySpan<byte>) =
        let table = crcTable.Force()
        let mutable c = 0xFFFFFFFFu
        for b in data do
            c <- table[int ((c ^^^ uint32 b) &&& 0xFFu)] ^^^ (c >>> 8)
        c ^^^ 0xFFFFFFFFu

    /// The file header.
    let header () : byte[] =
        let b = Array.zeroCreate HeaderLength
        magic.CopyTo(b, 0)
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan 8, Version)
        b

    let private putString (b: byte[]) (at: int) (s: byte[]) =
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan at, uint16 s.Length)
        s.CopyTo(b, at + 2)
        at + 2 + s.Length

    /// One record's bytes.
    let encodeRecord (r: CheckpointRecord) : byte[] =
        let clip (s: string) =
            let b = Encoding.UTF8.GetBytes(if isNull s then "" else s)
            if b.Length > int UInt16.MaxValue then Array.sub b 0 (int UInt16.MaxValue) else b
        let app = clip r.AppName
        let ty = clip r.TypeName
        let value = if isNull r.Value then [||] else r.Value
        let payloadLength = 32 + 2 + app.Length + 2 + ty.Length + value.Length
        let b = Array.zeroCreate (2 + 4 + payloadLength + 4)
        b[0] <- byte 'R'
        b[1] <- byte 'C'
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan 2, uint32 payloadLength)
        r.Key.Bytes.CopyTo(b, 6)
        let at = putString b (6 + 32) app
        let at = putString b at ty
        value.CopyTo(b, at)
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(6 + payloadLength), crc32 (ReadOnlySpan(b, 6, payloadLength)))
        b

    let private decodePayload (p: ReadOnlySpan<byte>) : CheckpointRecord option =
        if p.Length < 36 then None
        else
            let key = p.Slice(0, 32).ToArray()
            let appLen = int (BinaryPrimitives.ReadUInt16LittleEndian(p.Slice 32))
            if 34 + appLen + 2 > p.Length then None
            else
                let app = Encoding.UTF8.GetString(p.Slice(34, appLen))
                let at = 34 + appLen
                let tyLen = int (BinaryPrimitives.ReadUInt16LittleEndian(p.Slice at))
                if at + 2 + tyLen > p.Length then None
                else
                    let ty = Encoding.UTF8.GetString(p.Slice(at + 2, tyLen))
                    Some
                        { Key = MemoKey key
                          AppName = app
                          TypeName = ty
                          Value = p.Slice(at + 2 + tyLen).ToArray() }

    /// Reads a whole file's bytes. An empty file, or one cut inside its header, has no records. Errors: not a
    /// checkpoint file, or a version this code does not read.
    let decode (data: byte[]) : Result<CheckpointContents, string> =
        let isHeaderPrefix = data.Length < HeaderLength && ReadOnlySpan(data).SequenceEqual(ReadOnlySpan(header (), 0, data.Length))
        if isHeaderPrefix then Ok { Records = []; TornBytes = data.Length }
        elif data.Length < HeaderLength || not (ReadOnlySpan(data, 0, 8).SequenceEqual(ReadOnlySpan magic)) then
            Result.Error "not a Parsl.NET checkpoint file (no PARSLCKP header)"
        else
            let version = BinaryPrimitives.ReadUInt16LittleEndian(ReadOnlySpan(data, 8, 2))
            if version <> Version then
                Result.Error(sprintf "checkpoint format version %d; this Parsl.NET reads version %d" version Version)
            else
                let records = ResizeArray()
                let mutable at = HeaderLength
                let mutable go = true
                while go && at < data.Length do
                    if data.Length - at < 6 || data[at] <> byte 'R' || data[at + 1] <> byte 'C' then go <- false
                    else
                        let len = BinaryPrimitives.ReadUInt32LittleEndian(ReadOnlySpan(data, at + 2, 4))
                        if int64 len > int64 (data.Length - at - 10) then go <- false
                        else
                            let len = int len
                            let payload = ReadOnlySpan(data, at + 6, len)
                            let crc = BinaryPrimitives.ReadUInt32LittleEndian(ReadOnlySpan(data, at + 6 + len, 4))
                            if crc <> crc32 payload then go <- false
                            else
                                match decodePayload payload with
                                | Some r ->
                                    records.Add r
                                    at <- at + 10 + len
                                | None -> go <- false
                Ok { Records = List.ofSeq records; TornBytes = data.Length - at }
