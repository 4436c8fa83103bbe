"""Benchmark room (bench/chat.py): every message is broadcast to every socket of the room.

No storage, so the figures measure the socket path (front door, parking lot, worker
event queue, output), not fsync. `/<room>` through `Default` opens a socket.
"""

from stateroom import DurableObject, Response, WebSocketPair, WorkerEntrypoint


class Room(DurableObject):
    async def fetch(self, request):
        client, server = WebSocketPair()
        self.ctx.accept_web_socket(server)
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws, message):
        for peer in self.ctx.get_web_sockets():
            peer.send(message)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.ROOM.get_by_name(request.url_path.strip("/") or "lobby").fetch(
            request
        )
