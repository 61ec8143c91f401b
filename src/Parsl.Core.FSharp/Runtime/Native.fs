namespace Parsl.Runtime

// Placeholder, replaced by the shell-runner work: P/Invoke declarations for posix_spawn, waitpid and kill.
module internal Native =
    let placeholder = ()
