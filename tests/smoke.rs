mod common;
use backchannel::pb;
use common::*;

#[tokio::test]
async fn a_message_travels_two_mediators_and_is_acknowledged() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "overture"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.state, pb::message::State::Submitted as i32);
    w.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, m.id))
        .await
        .unwrap();
    w.france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap();
    let m2 = w
        .japan
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m2.state, pb::message::State::Delivered as i32);
    let m3 =
        w.us.messages
            .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(m3.state, pb::message::State::Acknowledged as i32);
    let evs = all_events(&mut w.admin, Default::default()).await;
    let types: Vec<i32> = evs.iter().map(|e| e.r#type).collect();
    use pb::event::Type as T;
    assert_eq!(
        types,
        vec![
            T::ChannelOpened as i32,
            T::MessageSent as i32,
            T::MessageAccepted as i32,
            T::MessageForwarded as i32,
            T::MessageDelivered as i32,
            T::MessageAcknowledged as i32
        ]
    );
    assert_err(
        w.outsider
            .messages
            .get_message(pb::GetMessageRequest {
                message_id: m.id.clone(),
            })
            .await,
        tonic::Code::NotFound,
        "MESSAGE_NOT_FOUND",
    );
}
