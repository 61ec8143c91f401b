using Parsl.Data;

namespace Parsl;

/// <summary>The kind of URL a staging provider moves.</summary>
public enum StagingScheme
{
    /// <summary><c>file</c> URLs and plain paths: nothing to move (a shared file system; Parsl's <c>NoOpFileStaging</c>).</summary>
    File = 0,
    /// <summary><c>http</c> and <c>https</c> stage-in (Parsl's <c>HTTPSeparateTaskStaging</c>/<c>HTTPInTaskStaging</c>).</summary>
    Http = 1,
    /// <summary><c>ftp</c> stage-in, anonymous login (Parsl's <c>FTPSeparateTaskStaging</c>/<c>FTPInTaskStaging</c>).</summary>
    Ftp = 2,
    /// <summary><c>zip:</c> stage-in (extract a member) and stage-out (add a member under a lock; Parsl's <c>ZipFileStaging</c>).</summary>
    Zip = 3,
}

/// <summary>Where a staging provider moves files.</summary>
public enum StagingPlacement
{
    /// <summary>As separate tasks on the app's executor, before and after the app (the default): needs a file system
    /// shared by this process and the workers.</summary>
    SeparateTask = 0,
    /// <summary>Inside the app's own task, on the worker, around its body: for workers without a shared file system.</summary>
    InTask = 1,
}

/// <summary>One staging provider (Parsl's <c>Staging</c> classes) for <see cref="DfkOptions.Staging"/>; the first
/// provider that handles a file's scheme wins.</summary>
public sealed class StagingProviderOptions
{
    /// <summary>The URLs it moves. Default <see cref="StagingScheme.File"/>.</summary>
    public StagingScheme Scheme { get; set; }

    /// <summary>Where it moves them; ignored for <see cref="StagingScheme.File"/>. Default <see cref="StagingPlacement.SeparateTask"/>.</summary>
    public StagingPlacement Placement { get; set; }

    /// <summary>Local files as they are (Parsl's <c>NoOpFileStaging</c>).</summary>
    public static StagingProviderOptions NoOpFile => new() { Scheme = StagingScheme.File };

    /// <summary>HTTP(S) stage-in.</summary>
    /// <param name="placement">Separate tasks or in the app's task.</param>
    /// <returns>The provider.</returns>
    public static StagingProviderOptions Http(StagingPlacement placement = StagingPlacement.SeparateTask) => new() { Scheme = StagingScheme.Http, Placement = placement };

    /// <summary>FTP stage-in.</summary>
    /// <param name="placement">Separate tasks or in the app's task.</param>
    /// <returns>The provider.</returns>
    public static StagingProviderOptions Ftp(StagingPlacement placement = StagingPlacement.SeparateTask) => new() { Scheme = StagingScheme.Ftp, Placement = placement };

    /// <summary>Zip stage-in and stage-out.</summary>
    /// <param name="placement">Separate tasks or in the app's task.</param>
    /// <returns>The provider.</returns>
    public static StagingProviderOptions Zip(StagingPlacement placement = StagingPlacement.SeparateTask) => new() { Scheme = StagingScheme.Zip, Placement = placement };

    internal ConfigurationError? Check() =>
        !Enum.IsDefined(Scheme) ? new ConfigurationError(nameof(StagingProviderOptions) + "." + nameof(Scheme), $"{(int)Scheme} is not a StagingScheme; use File, Http, Ftp or Zip")
        : !Enum.IsDefined(Placement) ? new ConfigurationError(nameof(StagingProviderOptions) + "." + nameof(Placement), $"{(int)Placement} is not a StagingPlacement; use SeparateTask or InTask")
        : null;

    internal StagingProvider Build()
    {
        var mode = Placement == StagingPlacement.InTask ? StagingMode.InTask : StagingMode.SeparateTask;
        return Scheme switch
        {
            StagingScheme.Http => StagingProvider.NewHttpStaging(mode),
            StagingScheme.Ftp => StagingProvider.NewFtpStaging(mode),
            StagingScheme.Zip => StagingProvider.NewZipStaging(mode),
            _ => StagingProvider.NoOpFileStaging,
        };
    }

    /// <inheritdoc/>
    public override string ToString() => Scheme == StagingScheme.File ? "NoOpFileStaging" : $"{Scheme}Staging({Placement})";
}
