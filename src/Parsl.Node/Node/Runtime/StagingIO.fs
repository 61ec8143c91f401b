namespace Parsl.Node.Runtime

open System
open System.IO
open System.IO.Compression
open System.Net.Http
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Data

/// The transfers behind the staging providers. Each writes to a temporary file beside its destination and
/// renames it into place, so a failed transfer never leaves a partial file where a good one was; each
/// failure is a `StagingError` naming the URL.
[<RequireQualifiedAccess>]
module StagingIO =
    let private fail (url: string) (message: string) (inner: exn) : 'T = raise (StagingError(url, message, inner))

    /// Writes a stream to `dest` through a temporary file, then renames it into place.
    let private writeAtomically (dest: string) (write: Stream -> Task) : Task =
        task {
            let full = Path.GetFullPath dest
            Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
            let temp = full + ".part-" + Guid.NewGuid().ToString("N")
            try
                do!
                    task {
                        use out = new FileStream(temp, FileMode.CreateNew, FileAccess.Write)
                        do! write out
                    }
                System.IO.File.Move(temp, full, true)
            finally
                if System.IO.File.Exists temp then System.IO.File.Delete temp
        }

    /// Downloads an `http`/`https` URL to `dest` (Parsl's HTTP staging).
    let httpGet (url: string) (dest: string) (cancellation: CancellationToken) : Task =
        task {
            use client = new HttpClient(Timeout = TimeSpan.FromMinutes 30.0)
            let! response =
                task {
                    try
                        return! client.GetAsync(url, HttpCompletionOption.ResponseHeadersRead, cancellation)
                    with
                    | :? OperationCanceledException when cancellation.IsCancellationRequested -> return raise (OperationCanceledException cancellation)
                    | e -> return fail url ("the server could not be reached: " + e.Message) e
                }
            use response = response
            if not response.IsSuccessStatusCode then
                fail url (sprintf "the server answered %d %s" (int response.StatusCode) response.ReasonPhrase) null
            try
                do! writeAtomically dest (fun out -> response.Content.CopyToAsync(out, cancellation))
            with
            | :? OperationCanceledException as e when cancellation.IsCancellationRequested -> raise e
            | e -> fail url ("the download broke off: " + e.Message) e
        }

    /// A reply of an FTP server: its code and text (the last line of a multi-line reply).
    let private readReply (reader: StreamReader) (url: string) : Task<int * string> =
        task {
            let! first = reader.ReadLineAsync()
            if isNull first || first.Length < 3 then return fail url "the FTP server closed the connection" null
            else
                let code = first.Substring(0, 3)
                let mutable line = first
                // A multi-line reply starts "NNN-" and ends with a line "NNN ".
                if first.Length > 3 && first[3] = '-' then
                    let mutable fin = false
                    while not fin do
                        let! l = reader.ReadLineAsync()
                        if isNull l then fin <- true
                        else
                            line <- l
                            fin <- l.StartsWith(code + " ")
                match Int32.TryParse code with
                | true, n -> return n, line
                | _ -> return fail url (sprintf "the FTP server sent a malformed reply: %s" first) null
        }

    /// Downloads an `ftp` URL to `dest` with an anonymous login and a passive-mode binary transfer (Parsl's
    /// FTP staging, which uses `ftplib` the same way).
    let ftpGet (url: string) (dest: string) (cancellation: CancellationToken) : Task =
        task {
            let uri =
                try
                    Uri url
                with e ->
                    fail url "not a valid ftp URL" e
            let port = if uri.Port > 0 then uri.Port else 21
            use control = new TcpClient()
            try
                do! control.ConnectAsync(uri.Host, port, cancellation)
            with
            | :? OperationCanceledException as e when cancellation.IsCancellationRequested -> raise e
            | e -> fail url (sprintf "the FTP server %s:%d could not be reached: %s" uri.Host port e.Message) e
            use stream = control.GetStream()
            use reader = new StreamReader(stream, Encoding.ASCII)
            use writer = new StreamWriter(stream, Encoding.ASCII, NewLine = "\r\n", AutoFlush = true)
            let command (c: string) (expected: int list) =
                task {
                    if c <> "" then do! writer.WriteLineAsync c
                    let! code, text = readReply reader url
                    if not (List.contains code expected) then
                        let shown = if c.StartsWith "PASS" then "PASS ***" else c
                        return fail url (sprintf "the FTP server refused %s: %s" (if c = "" then "the connection" else shown) text) null
                    else return code, text
                }
            let! _ = command "" [ 220 ]
            let user = if uri.UserInfo = "" then "anonymous" else Uri.UnescapeDataString(uri.UserInfo.Split(':')[0])
            let password =
                match uri.UserInfo.Split(':') with
                | [| _; p |] -> Uri.UnescapeDataString p
                | _ -> "anonymous@"
            let! code, _ = command ("USER " + user) [ 230; 331 ]
            if code = 331 then
                let! _ = command ("PASS " + password) [ 230; 202 ]
                ()
            let! _ = command "TYPE I" [ 200 ]
            let! _, pasv = command "PASV" [ 227 ]
            // "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)": connect to the control host, not the address
            // the server names (it may be a NAT address; this is what ftplib does too by default).
            let inside = pasv.Substring(pasv.IndexOf '(' + 1).TrimEnd(')', '.', ' ').Split(',')
            let dataPort =
                try
                    int inside[4] * 256 + int inside[5]
                with e ->
                    fail url (sprintf "the FTP server sent a malformed PASV reply: %s" pasv) e
            use data = new TcpClient()
            do! data.ConnectAsync(uri.Host, dataPort, cancellation)
            let! _ = command ("RETR " + Uri.UnescapeDataString uri.AbsolutePath) [ 125; 150 ]
            try
                do!
                    writeAtomically dest (fun out ->
                        task {
                            use ds = data.GetStream()
                            do! ds.CopyToAsync(out, cancellation)
                        })
            with
            | :? OperationCanceledException as e when cancellation.IsCancellationRequested -> raise e
            | e -> fail url ("the transfer broke off: " + e.Message) e
            let! _ = command "" [ 226; 250 ]
            do! writer.WriteLineAsync "QUIT"
        }

    /// Extracts a member of a zip archive to `dest` (Parsl's zip stage-in).
    let zipExtract (url: string) (archive: string) (inner: string) (dest: string) (cancellation: CancellationToken) : Task =
        task {
            if not (System.IO.File.Exists archive) then fail url (sprintf "the archive %s does not exist" archive) null
            use zip =
                try
                    ZipFile.OpenRead archive
                with e ->
                    fail url (sprintf "the archive %s cannot be read: %s" archive e.Message) e
            match zip.GetEntry inner with
            | null -> fail url (sprintf "the archive %s has no member %s" archive inner) null
            | entry ->
                do!
                    writeAtomically dest (fun out ->
                        task {
                            use s = entry.Open()
                            do! s.CopyToAsync(out, cancellation)
                        })
        }

    /// Holds `<archive>.lock` exclusively (the lock Parsl's zip staging takes with `filelock`), waiting while
    /// another writer, in this process or another, holds it.
    let private lockArchive (url: string) (archive: string) (cancellation: CancellationToken) : Task<FileStream> =
        task {
            let path = archive + ".lock"
            let deadline = DateTime.UtcNow + TimeSpan.FromMinutes 10.0
            let mutable held: FileStream = null
            let mutable wait = 5
            while isNull held do
                try
                    held <- new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None)
                with :? IOException as e ->
                    if DateTime.UtcNow > deadline then fail url (sprintf "the lock %s was held for 10 minutes" path) e
                    // Back off while another writer holds the lock: there is no event to wait on across processes.
                    do! Task.Delay(wait, cancellation)
                    wait <- min 200 (wait * 2)
            return held
        }

    let private addMember (zipPath: string) (inner: string) (source: string) =
        use zip = ZipFile.Open(zipPath, ZipArchiveMode.Update)
        match zip.GetEntry inner with
        | null -> ()
        | old -> old.Delete()
        zip.CreateEntryFromFile(source, inner, CompressionLevel.Optimal) |> ignore

    /// Adds (or replaces) a member of a zip archive from `source`, creating the archive if needed (Parsl's zip
    /// stage-out). The archive is rewritten to a temporary file and renamed into place under the lock, so
    /// concurrent writers never lose each other's members and a crash never leaves a torn archive.
    let zipAdd (url: string) (archive: string) (inner: string) (source: string) (cancellation: CancellationToken) : Task =
        task {
            if not (System.IO.File.Exists source) then
                fail url (sprintf "the app did not write %s, which was to be added to %s as %s" source archive inner) null
            let full = Path.GetFullPath archive
            Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
            use! _lock = lockArchive url full cancellation
            let temp = full + ".part-" + Guid.NewGuid().ToString("N")
            try
                try
                    if System.IO.File.Exists full then System.IO.File.Copy(full, temp)
                    addMember temp inner source
                    System.IO.File.Move(temp, full, true)
                with e ->
                    fail url (sprintf "adding %s to %s failed: %s" inner archive e.Message) e
            finally
                if System.IO.File.Exists temp then System.IO.File.Delete temp
        }
