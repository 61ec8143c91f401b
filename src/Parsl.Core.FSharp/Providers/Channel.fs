namespace Parsl.Providers

open System
open Parsl

/// How to reach a login node over SSH, so that a laptop can drive a cluster's scheduler
/// (what Parsl's `SSHChannel` did before Parsl removed channels).
type SshOptions =
    { /// The login node.
      Host: string
      /// Default 22.
      Port: int
      /// The remote user.
      Username: string
      /// A private key file (OpenSSH format). Either this or `Password`.
      PrivateKeyFile: string option
      /// The key's passphrase, if it has one.
      PrivateKeyPassphrase: string option
      /// Password login, when the site allows it.
      Password: string option
      /// The server's host key fingerprint as OpenSSH prints it (`SHA256:...`, from
      /// `ssh-keyscan host | ssh-keygen -lf -`). A server presenting another key is refused.
      HostKeyFingerprint: string option
      /// Skip the host key check. Insecure: only for throw-away test machines. Default false.
      AcceptAnyHostKey: bool
      /// Where scripts go on the login node; relative paths are under the remote home. Default `.parsl/submit_scripts`.
      RemoteScriptDir: string
      /// Default 30 s.
      ConnectTimeout: TimeSpan }

/// Functions over SSH options.
[<RequireQualifiedAccess>]
module SshOptions =
    /// Options for `user@host` with no credentials yet.
    let create host username =
        { Host = host
          Port = 22
          Username = username
          PrivateKeyFile = None
          PrivateKeyPassphrase = None
          Password = None
          HostKeyFingerprint = None
          AcceptAnyHostKey = false
          RemoteScriptDir = ".parsl/submit_scripts"
          ConnectTimeout = TimeSpan.FromSeconds 30.0 }

    /// Checks the options; `owner` names the provider.
    let validate owner (o: SshOptions) =
        let f name = sprintf "%s.Channel.%s" owner name
        [ if String.IsNullOrWhiteSpace o.Host then ConfigurationError(f "Host", "is empty; name the login node")
          if o.Port < 1 || o.Port > 65535 then ConfigurationError(f "Port", sprintf "is %d; use 1-65535 (22 for SSH)" o.Port)
          if String.IsNullOrWhiteSpace o.Username then ConfigurationError(f "Username", "is empty; name the remote user")
          if o.PrivateKeyFile.IsNone && o.Password.IsNone then
              ConfigurationError(f "PrivateKeyFile", "neither a private key file nor a password is set; give one of them")
          match o.PrivateKeyFile with
          | Some p when not (IO.File.Exists p) -> ConfigurationError(f "PrivateKeyFile", sprintf "'%s' does not exist" p)
          | _ -> ()
          match o.HostKeyFingerprint with
          | None when not o.AcceptAnyHostKey ->
              ConfigurationError(f "HostKeyFingerprint",
                  sprintf "is not set, so the server cannot be checked; set it to the output of `ssh-keyscan -p %d %s | ssh-keygen -lf -` (SHA256:...)" o.Port o.Host)
          | Some fp when not (fp.StartsWith("SHA256:", StringComparison.Ordinal) || fp.Contains ":") ->
              ConfigurationError(f "HostKeyFingerprint", sprintf "'%s' is neither SHA256:<base64> nor MD5 aa:bb:..." fp)
          | _ -> ()
          if String.IsNullOrWhiteSpace o.RemoteScriptDir then
              ConfigurationError(f "RemoteScriptDir", "is empty; use a directory on the cluster's shared file system")
          if o.ConnectTimeout <= TimeSpan.Zero then ConfigurationError(f "ConnectTimeout", "must be positive") ]

/// Where a provider runs its scheduler commands and keeps its scripts.
type Channel =
    /// This machine's shell (the default; Parsl's only mode since channels were removed).
    | Local
    /// A login node over SSH: commands run there, scripts are copied there (SFTP).
    | Ssh of SshOptions
