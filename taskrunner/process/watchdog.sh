# The watchdog of one taskrunner instance (started by taskrunner/watchdog.py, which says
# why). $1: the fd of the table of live process groups, one per line. stdin: a pipe the
# instance never writes to. Every command used here is a shell built-in.
# The instance starts it with these ignored already (a shell keeps a signal ignored on entry
# ignored); the trap says so to a reader, and holds when the script is run by hand.
trap '' INT TERM HUP
table=/proc/self/fd/$1
[ -r "$table" ] || { echo "taskrunner watchdog: cannot read its table $table" >&2; exit 1; }
echo ready
exec >&-
# EOF: the instance is gone, however it ended.
while read -r _; do :; done
n=0 listed=
while read -r pgid; do
    case $pgid in ''|*[!0-9]*) continue ;; esac
    # "kill -- -1" would signal every process this user may signal.
    [ "$pgid" -gt 1 ] || continue
    kill -s KILL -- "-$pgid" 2>/dev/null  # fails only if the group is already gone
    n=$((n + 1)) listed="$listed $pgid"
done < "$table"
[ "$n" = 0 ] || echo "taskrunner watchdog: the instance died; killed $n command group(s):$listed" >&2
