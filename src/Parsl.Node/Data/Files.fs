namespace Parsl.Data

open Parsl

open System

/// A file an app reads or writes, named by a path or a URL (Parsl's `File`): `input.txt`,
/// `file:///scratch/a.dat`, `http://host/x.csv`, `https://...`, `ftp://host/dir/x`, `zip:/path/a.zip/inner/x`.
/// Files of other schemes than `file` are staged: copied to `LocalPath` before the app runs (inputs),
/// or from `LocalPath` after it (outputs). Build one with `File.Of`.
type File =
    { /// The URL or path as given.
      Url: string
      /// The scheme, lower case; `file` when the URL has none.
      Scheme: string
      /// The host part (`host:port` of `http://host:port/x`); empty for local files.
      Netloc: string
      /// The path part (without query or fragment).
      Path: string
      /// Where the file is in the task's file system once staged; null until then.
      LocalPath: string }

    /// The file's name: the last segment of its path.
    member this.FileName =
        let p = this.Path.TrimEnd '/'
        match p.LastIndexOf '/' with
        | -1 -> p
        | i -> p.Substring(i + 1)

    /// The path an app uses to open the file (Parsl's `filepath`): `LocalPath` once staged, else the path of a
    /// `file` URL. Raises `InvalidOperationException` for a remote file that was not staged.
    member this.Filepath =
        if not (isNull this.LocalPath) then this.LocalPath
        elif this.Scheme = "file" then this.Path
        else
            raise (
                InvalidOperationException(
                    sprintf "File %s has no local path: pass it to an app so that it is staged first" this.Url)
            )

    /// The same file, not yet staged (Parsl's `cleancopy`).
    member this.CleanCopy() = { this with LocalPath = null }

    /// The same file, staged at `localPath`.
    member this.WithLocalPath(localPath: string) = { this with LocalPath = localPath }

    override this.ToString() =
        if not (isNull this.LocalPath) || this.Scheme = "file" then this.Filepath else this.Url

    /// Parses a path or URL (as Python's `urllib.parse.urlparse`, which Parsl uses).
    static member Of(url: string) : File =
        if isNull url then nullArg "url"
        if url.Trim() = "" then invalidArg "url" "a File needs a path or URL; got an empty string"
        // A scheme is a letter then letters, digits, '+', '-' or '.', followed by ':'.
        let colon = url.IndexOf ':'
        let isSchemeChar c = Char.IsAsciiLetterOrDigit c || c = '+' || c = '-' || c = '.'
        let hasScheme =
            colon > 0 && Char.IsAsciiLetter url[0] && url.Substring(0, colon) |> Seq.forall isSchemeChar
        let scheme, rest = if hasScheme then url.Substring(0, colon).ToLowerInvariant(), url.Substring(colon + 1) else "", url
        let netloc, rest =
            if rest.StartsWith "//" then
                let r = rest.Substring 2
                let stop = r.IndexOfAny [| '/'; '?'; '#' |]
                if stop < 0 then r, "" else r.Substring(0, stop), r.Substring stop
            else
                "", rest
        let path =
            match rest.IndexOfAny [| '?'; '#' |] with
            | -1 -> rest
            | i -> rest.Substring(0, i)
        { Url = url
          Scheme = (if scheme = "" then "file" else scheme)
          Netloc = netloc
          Path = path
          LocalPath = null }

/// A `zip:` URL has a host part (Parsl's `ZipAuthorityError`): zip archives are local, as `zip:/path/a.zip/inner`.
type ZipAuthorityError(file: File) =
    inherit ParslException(
        sprintf "The zip URL %s names a host (%s); zip URLs are local: zip:/path/to/archive.zip/path/inside" file.Url file.Netloc)
    /// The file.
    member _.File = file

/// Staging a file in or out failed, or no staging provider handles its scheme. Only the task that needed it fails.
type StagingError(url: string, message: string, inner: exn) =
    inherit ParslException(sprintf "Staging %s failed: %s" url message, inner)
    /// The URL that could not be staged.
    member _.Url = url

/// Functions over files.
[<RequireQualifiedAccess>]
module File =
    /// Parses a path or URL.
    let ofUrl (url: string) = File.Of url

    /// Splits a `zip:` file's path into the archive's path and the member's path inside it, at the first
    /// `.zip/`. Errors name the URL.
    let zipSplit (file: File) : Result<string * string, exn> =
        if file.Netloc <> "" then Error(ZipAuthorityError file :> exn)
        else
            match file.Path.IndexOf(".zip/", StringComparison.Ordinal) with
            | -1 ->
                Error(
                    StagingError(file.Url, "a zip URL must name an archive ending in .zip and a path inside it: zip:/dir/archive.zip/inner/file", null)
                    :> exn)
            | i ->
                let inner = file.Path.Substring(i + 5).TrimStart '/'
                if inner = "" then Error(StagingError(file.Url, "the zip URL names no file inside the archive", null) :> exn)
                else Ok(file.Path.Substring(0, i + 4), inner)

/// How a staging provider moves files (Parsl's separate-task and in-task staging).
type StagingMode =
    /// As separate kernel tasks on the app's executor, before (stage-in) or after (stage-out) the app.
    /// Needs a file system shared by the client and the workers.
    | SeparateTask
    /// Inside the app's own task, on the worker, around the app's body: for workers with no shared file system.
    | InTask

/// A staging provider (Parsl's `Staging` classes). The first provider that handles a file's scheme wins.
type StagingProvider =
    /// `file` URLs: nothing to move (a shared file system). Parsl's `NoOpFileStaging`.
    | NoOpFileStaging
    /// `http`/`https` stage-in (Parsl's `HTTPSeparateTaskStaging` / `HTTPInTaskStaging`).
    | HttpStaging of StagingMode
    /// `ftp` stage-in, anonymous login (Parsl's `FTPSeparateTaskStaging` / `FTPInTaskStaging`).
    | FtpStaging of StagingMode
    /// `zip:` stage-in (extract a member) and stage-out (add or replace a member, under the archive's
    /// `<archive>.lock` file lock). Parsl's `ZipFileStaging`.
    | ZipStaging of StagingMode

/// Functions over staging providers.
[<RequireQualifiedAccess>]
module StagingProvider =
    /// Parsl's default list: no-op for local files, then FTP, HTTP and zip, each as separate tasks.
    let defaults = [ NoOpFileStaging; FtpStaging SeparateTask; HttpStaging SeparateTask; ZipStaging SeparateTask ]

    /// Can this provider stage the file in?
    let canStageIn (file: File) (p: StagingProvider) =
        match p, file.Scheme with
        | NoOpFileStaging, "file" -> true
        | HttpStaging _, ("http" | "https") -> true
        | FtpStaging _, "ftp" -> true
        | ZipStaging _, "zip" -> true
        | _ -> false

    /// Can this provider stage the file out?
    let canStageOut (file: File) (p: StagingProvider) =
        match p, file.Scheme with
        | NoOpFileStaging, "file" -> true
        | ZipStaging _, "zip" -> true
        | _ -> false
